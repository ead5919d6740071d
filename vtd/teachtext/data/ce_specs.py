"""Where the official TeachText / Collaborative Experts releases keep each dataset's features.

Data only: `vtd.teachtext.data.ce_features` reads what this table names. Every value carries its source:

  [ref §N]   /work/shared/reference/teachtext.md, section N.
  [CE f]     albanie/collaborative-experts file f, read for this table beyond the reference
             (configs/data_loader_<ds>.json for max tokens and caption counts,
             data_loader/<Ds>_dataset.py `custom_paths`, misc/datasets/<ds>/tar_include_hq.txt
             for the files the "high-quality" archives ship). Versions read: tar lists
             b41defc (MSR-VTT; an older one names gpt2-xl-finetuned.pkl), 6c13a2c, 7eb3b9d
             (LSMDC); loaders 19b0384 (MSR-VTT), 5ccf96e, 561c3b7 (MSVD, VaTeX), ffd6c0b
             (QuerYD); data_loader configs 31cf2d2, d4ab7aa (ActivityNet).
  [computed] `BaseDataset.visual_feat_paths` applied to configs/base_config.json
             `feat_aggregation` (aggregated_<type>_<fps>fps_<px>px_stride<s>[_offset<o>]
             [_inner_stride<i>]/<model>-<agg>.pickle) [ref §5.1].
  [inferred] not stated anywhere read; an assumption of this table.
  NOT FOUND  nothing read states it; the loader then needs the value from the caller.

Paths are relative to the feature root `<data_dir>/<data_folder>/<root_feat_folder>`; text
features default to `<text_dir>/<name>.pkl` for any embedding name (the official
`common_text_feat_paths`), `text_files` lists the non-standard ones. Every path can be overridden
by the caller (`load_ce_dataset(expert_paths=..., text_paths=...)`).

Known gaps (all overridable):
* i3d.i3d.0, face and ocr are in no HQ archive ([ref §5.1] for MSR-VTT, issue #37; the other
  tar lists likewise): they need the old release's files.
* LSMDC: the HQ tar list puts audio/speech under aggregated_audio_feats/vggish-audio-raw.pickle
  and aggregated_speech_feats/speech-w2v.pickle, while [CE data_loader/LSMDC_dataset.py@5ccf96e]
  reads aggregated_audio/vggish-raw.pickle and aggregated_speech/speech-w2v.pickle; this table
  follows the archive. Its split lists ship under data/LSMDC/structured-symlinks/ (`list_folder`),
  inside the permission-gated LSMDC tar [ref §5.5].
* QuerYD / VaTeX audio is `.hickle` [ref §5.2]; the reader does not read hickle (convert it to a
  pickle and override the path), so it is not a default expert.
* MSVD `openai` text needs a key remap through dict_youtube_mapping.pkl [ref §5.3]; unsupported.
* VaTeX: no config exists [ref §3]: experts, max tokens and data folder are NOT FOUND.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from vtd.errors import UserError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class CEDatasetSpec:
  """One dataset of the official release.

  Attributes:
    name: vtd's key, e.g. "msrvtt_full".
    data_folder: `<data_dir>/<data_folder>` in the official configs' `data_dir`.
    root_feat_folder: the feature root below it.
    list_folder: folder of the split lists below `<data_dir>/<data_folder>` (= root_feat_folder
      unless the archive puts them elsewhere).
    split_lists: split -> list file name (val and test may share one file).
    expert_paths: expert -> relative pickle path.
    variable_experts: expert -> max tokens, for [T, D] token-sequence experts (NetVLAD-pooled).
    default_experts: the experts loaded when the caller names none (None: NOT FOUND).
    text_dir: folder of `<name>.pkl` text features.
    text_files: non-standard embedding name -> relative paths, merged in order.
    default_text: text embeddings loaded when the caller names none.
    max_text_tokens: word features kept per caption (None: NOT FOUND).
    fuse_captions: all captions of a video concatenated into one paragraph.
    eval_captions: split -> captions kept per video (the first N); absent: all.
    caption_index_file: pickle vid -> caption index restricting val/test to that caption.
    strip_id_suffix: ids in the split lists carry a suffix cut at the first ".".
    unsupported: expert or text name -> why this reader cannot load it.
  """
  name: str
  data_folder: str
  root_feat_folder: str
  list_folder: str
  split_lists: Mapping[str, str]
  expert_paths: Mapping[str, str]
  variable_experts: Mapping[str, int]
  default_experts: tuple[str, ...] | None
  text_dir: str
  text_files: Mapping[str, tuple[str, ...]]
  default_text: tuple[str, ...]
  max_text_tokens: int | None
  fuse_captions: bool
  eval_captions: Mapping[str, int]
  caption_index_file: str | None = None
  strip_id_suffix: bool = False
  unsupported: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def text_file(self, embedding: str) -> tuple[str, ...]:
    """Relative path(s) of a text embedding's features."""
    return self.text_files.get(embedding, (f"{self.text_dir}/{embedding}.pkl",))


HQ = "high-quality/structured-symlinks"  # base_config root_feat_folder [ref §5.1]
OLD = "structured-symlinks"  # CE features-v2 release [ref §5.1]
_AGG_IMAGENET = "aggregated_imagenet_25fps_256px_stride1_offset0"
_AGG_R2P1D = "aggregated_r2p1d_30fps_256px_stride32_offset0_inner_stride1"

# The fixed-size visual experts shared by all datasets (each: [D] per video, `avg` over time).
VISUAL_EXPERTS = {
    # [ref §5.1] (its example path); 2048-d [ref §1.2].
    "imagenet.senet154.0": f"{_AGG_IMAGENET}/senet154-avg.pickle",
    # [computed]; in every HQ tar [CE misc/datasets/*/tar_include_hq.txt]; 2048-d.
    "imagenet.resnext101_32x48d.0": f"{_AGG_IMAGENET}/resnext101_32x48d-avg.pickle",
    # [computed]; in every HQ tar; 2208-d.
    "scene.densenet161.0":
        "aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle",
    # [computed]; in every HQ tar; 512-d.
    "r2p1d.r2p1d-ig65m.0": f"{_AGG_R2P1D}/r2p1d-ig65m-avg.pickle",
    # [ref §5.1] (its example path); 512-d.
    "r2p1d.r2p1d-ig65m-kinetics.0": f"{_AGG_R2P1D}/r2p1d-ig65m-kinetics-avg.pickle",
    # [computed] (fps 25, stride 25, inner_stride 1, 256 px); in no HQ tar [ref §5.1]; 1024-d.
    "i3d.i3d.0": "aggregated_i3d_25fps_256px_stride25_offset0_inner_stride1/i3d-avg.pickle",
}

# CE+ / TeachText "refined" experts [ref §1.2].
REFINED = ("audio", "imagenet.resnext101_32x48d.0", "imagenet.senet154.0",
           "r2p1d.r2p1d-ig65m-kinetics.0", "r2p1d.r2p1d-ig65m.0", "scene.densenet161.0",
           "speech")
# The three TT-CE+ teachers' text embeddings [ref §2.3]; the student uses gpt2-xl-finetune.
TT_TEXT = ("w2v", "gpt2-xl", "gpt2-xl-finetune")

_MSRVTT_EXPERTS = {
    **VISUAL_EXPERTS,
    "audio": "aggregated_audio_feats/Audio_MSRVTT_new.pickle",  # [ref §5.1]
    "speech": "aggregated_speech/speech-w2v.pickle",  # [ref §5.1]
    "face": "aggregated_face_feats/facefeats-avg.pickle",  # [ref §5.1]
    "ocr": "aggregated_ocr_feats/ocr-raw.pickle",  # [ref §5.1]
}
_MSRVTT_TOKENS = {"audio": 29, "speech": 32, "ocr": 49}  # [ref §1.2]
_MSRVTT_TEXT = {  # [ref §5.3]; under aggregated_text_feats/ [CE data_loader/MSRVTT_dataset.py]
    "openai": ("aggregated_text_feats/w2v_MSRVTT_openAIGPT.pickle",)}
_MSRVTT_COMMON = dict(
    data_folder="MSRVTT", root_feat_folder=HQ, list_folder=HQ,  # [ref §5.1]
    variable_experts=_MSRVTT_TOKENS, text_dir="aggregated_text_feats", text_files=_MSRVTT_TEXT,
    max_text_tokens=37,  # [ref §3]
    fuse_captions=False)  # [ref §3]

SPECS: dict[str, CEDatasetSpec] = {
    "msrvtt_full": CEDatasetSpec(
        name="msrvtt_full", **_MSRVTT_COMMON,
        split_lists={"train": "train_list_full.txt", "val": "val_list_full.txt",
                     "test": "test_list_full.txt"},  # [ref §5.5]
        expert_paths=_MSRVTT_EXPERTS, default_experts=REFINED, default_text=TT_TEXT,
        eval_captions={"val": 1, "test": 20}),  # [ref §3] val: 1st caption; test: all 20
    "msrvtt_1ka": CEDatasetSpec(  # JSFusion split
        name="msrvtt_1ka", **_MSRVTT_COMMON,
        split_lists={"train": "train_list_jsfusion.txt", "val": "val_list_jsfusion.txt",
                     "test": "val_list_jsfusion.txt"},  # [ref §3] val = test
        # [inferred]: TeachText reports no 1k-A numbers; the CE config uses 9 experts, openai.
        expert_paths=_MSRVTT_EXPERTS, default_experts=REFINED, default_text=TT_TEXT,
        eval_captions={},
        # [ref §3, §5.3]: one test caption per video chosen by this file (the HQ tar list
        # misspells its folder, [ref §5.1]).
        caption_index_file="jsfusion_val_caption_idx.pkl"),
    "msrvtt_1kb": CEDatasetSpec(  # Miech split
        name="msrvtt_1kb", **_MSRVTT_COMMON,
        split_lists={"train": "train_list_miech.txt", "val": "test_list_miech.txt",
                     "test": "test_list_miech.txt"},  # [ref §3] val = test (fixed epochs)
        # The miech split swaps in the MoEE features [ref §5.1; CE MSRVTT_dataset.py
        # custom_miech_paths]; face is 128-d there [ref §1.2]. The audio token limit is
        # MSR-VTT's [inferred].
        expert_paths={**_MSRVTT_EXPERTS, "antoine-rgb": "antoine/resnet_features.pickle",
                      "audio": "antoine/audio_features.pickle",
                      "flow": "antoine/flow_features.pickle",
                      "face": "antoine/facefeats-clone.pickle"},
        default_experts=REFINED,  # [inferred]: no CE+ config for 1k-B
        default_text=("w2v",),  # [ref §3]
        eval_captions={"val": 1, "test": 1}),  # [ref §3] first caption
    "msvd": CEDatasetSpec(
        name="msvd", data_folder="MSVD", root_feat_folder=HQ, list_folder=HQ,
        split_lists={"train": "train_list.txt", "val": "val_list.txt",
                     "test": "test_list.txt"},  # [CE data_loader/MSVD_dataset.py, tar]
        expert_paths={
            **VISUAL_EXPERTS,
            # stride 8 for MSVD [ref §1.2; CE MSVD_dataset.py custom_paths, tar].
            "r2p1d.r2p1d-ig65m-kinetics.0": "aggregated_r2p1d_30fps_256px_stride8_offset0_"
                                            "inner_stride1/r2p1d-ig65m-kinetics-avg.pickle",
            "face": "aggregated_face_feats/face-avg.pickle",  # [CE MSVD_dataset.py]
            "ocr": "aggregated_ocr_feats/ocr-w2v.pickle"},  # [CE MSVD_dataset.py]
        variable_experts={"ocr": 30},  # [CE configs/data_loader_msvd.json]
        # CE+ drops audio and speech [ref §1.2].
        default_experts=tuple(e for e in REFINED if e not in ("audio", "speech")),
        text_dir="aggregated_text_feats", text_files={}, default_text=TT_TEXT,
        max_text_tokens=30,  # [ref §3]
        fuse_captions=False,
        eval_captions={"val": 81, "test": 81},  # [ref §3] num_test_captions 81
        unsupported={"openai": "MSVD openai-caption-*.pkl are keyed through "
                               "dict_youtube_mapping.pkl [ref §5.3]; not supported"}),
    "didemo": CEDatasetSpec(
        name="didemo", data_folder="DiDeMo", root_feat_folder=HQ, list_folder=HQ,
        split_lists={"train": "train_list.txt", "val": "val_list.txt",
                     "test": "test_list.txt"},  # [CE DiDeMo_dataset.py, tar]
        expert_paths={  # custom paths [CE data_loader/DiDeMo_dataset.py; HQ tar]
            **VISUAL_EXPERTS,
            "audio": "aggregated_audio_feats/vggish-audio-raw.pickle",
            "speech": "aggregated_speech_feats/stt_w2v.pickle",
            "ocr": "aggregated_ocr_feats/ocr-feats.pkl",
            "face": "aggregated_facefeats_25fps_256px_stride1/face-avg.pickle"},
        variable_experts={"audio": 23, "speech": 48, "ocr": 8},  # [CE data_loader_didemo.json]
        default_experts=REFINED, text_dir="aggregated_text_feats",
        text_files={"openai": ("aggregated_text_feats/openai-feats.pkl",)},  # [ref §5.3]
        default_text=TT_TEXT,
        max_text_tokens=48, fuse_captions=True,  # [ref §3]
        eval_captions={},
        strip_id_suffix=True),  # [ref §5.5] ".mp4" cut at the first "."
    "activitynet": CEDatasetSpec(
        name="activitynet", data_folder="activity-net", root_feat_folder=HQ, list_folder=HQ,
        split_lists={"train": "train_list.txt", "val": "val_1_list.txt",
                     "test": "val_1_list.txt"},  # [ref §3] val_1 is val and test
        expert_paths={  # custom paths [CE data_loader/ActivityNet_dataset.py; HQ tar]
            **VISUAL_EXPERTS,
            "audio": "aggregated_audio/vggish-audio-raw.pickle",
            "speech": "aggregated_speech/goog_w2v-speech-raw.pickle",
            "ocr": "aggregated_ocr_feats/ocr-w2v.pkl",
            "face": "aggregated_facefeats_25fps_256px_stride1/face-avg.pickle"},
        # [CE configs/data_loader_activity-net.json@d4ab7aa]
        variable_experts={"audio": 4, "speech": 29, "ocr": 6},
        default_experts=REFINED, text_dir="aggregated_text_feats",
        text_files={"openai": ("aggregated_text_feats/openai-train.pkl",
                               "aggregated_text_feats/openai-val1.pkl")},  # [ref §5.3]
        default_text=TT_TEXT,
        max_text_tokens=49, fuse_captions=True,  # [ref §3]
        eval_captions={}),
    "lsmdc": CEDatasetSpec(
        name="lsmdc", data_folder="LSMDC", root_feat_folder=HQ,
        list_folder=OLD,  # [CE misc/datasets/lsmdc/tar_include_hq.txt]
        split_lists={"train": "train_list.txt", "val": "val_list.txt",
                     "test": "test_list.txt"},  # [CE LSMDC_dataset.py]
        expert_paths={
            **VISUAL_EXPERTS,
            # The HQ tar's names; the code's differ (module docstring).
            "audio": "aggregated_audio_feats/vggish-audio-raw.pickle",
            "speech": "aggregated_speech_feats/speech-w2v.pickle",
            "ocr": "aggregated_ocr_feats/ocr-w2v.pkl",  # [CE LSMDC_dataset.py]
            "face": "antoine/face-max-with-blank-val.pickle"},  # [CE LSMDC_dataset.py]
        variable_experts={"audio": 11, "speech": 35, "ocr": 6},  # [CE data_loader_lsmdc.json]
        default_experts=REFINED, text_dir="aggregated_text_feats",
        text_files={"openai": ("aggregated_text_feats/openai-text.pickle",)},  # [CE LSMDC_dataset]
        default_text=TT_TEXT,
        max_text_tokens=36,  # [ref §3]
        fuse_captions=False,
        eval_captions={"val": 1, "test": 1}),  # [ref §3] one caption per clip
    "queryd": CEDatasetSpec(
        name="queryd", data_folder="QuerYD", root_feat_folder=OLD, list_folder=OLD,  # [ref §5.1]
        split_lists={"train": "train_list.txt", "val": "val_list.txt",
                     "test": "test_list.txt"},  # [CE data_loader/QuerYD_dataset.py]
        expert_paths={**VISUAL_EXPERTS,
                      "audio": "aggregated_audio/vggish-raw.hickle"},  # [ref §5.2]
        variable_experts={"audio": 29},  # [CE configs/data_loader_queryd.json]
        # The config's experts [CE data_loader_queryd.json] minus the hickle audio.
        default_experts=("imagenet.resnext101_32x48d.0", "r2p1d.r2p1d-ig65m.0",
                         "scene.densenet161.0"),
        text_dir="text_embeddings", text_files={},  # [CE QuerYD_dataset.py]
        default_text=("w2v",),  # [ref §3]
        max_text_tokens=20, fuse_captions=True,  # [ref §3]
        eval_captions={},
        unsupported={"audio": "vggish-raw.hickle is hickle; convert it to a pickle of "
                              "{video id: [T, 128]} and pass expert_paths={'audio': ...}"}),
    "vatex": CEDatasetSpec(
        name="vatex",
        data_folder="VaTeX",  # [inferred]
        root_feat_folder=HQ, list_folder=HQ,  # [computed]: base_config default, no VaTeX config
        split_lists={"train": "train_list.txt", "val": "val_list_split1.txt",
                     "test": "val_list_split2.txt"},  # [ref §3; CE data_loader/VaTeX_dataset.py]
        expert_paths={**VISUAL_EXPERTS,
                      "audio": "aggregated_audio/vggish-raw.hickle"},  # [ref §5.2]
        variable_experts={},  # audio max tokens NOT FOUND
        default_experts=None,  # NOT FOUND: no VaTeX config [ref §3]
        text_dir="text-embeddings", text_files={},  # [ref §3]
        default_text=TT_TEXT,  # [inferred]; which files ship is NOT FOUND
        max_text_tokens=None,  # NOT FOUND
        fuse_captions=False,
        eval_captions={"val": 10, "test": 10},  # [ref §3] 10 test captions
        unsupported={"audio": "vggish-raw.hickle is hickle (and its max tokens are NOT "
                              "FOUND); convert it and pass expert_paths and expert_max_tokens"}),
}


def get_spec(dataset: str) -> CEDatasetSpec:
  """The spec of `dataset` (a key of `SPECS`); an unknown name is a UserError listing them."""
  if dataset not in SPECS:
    raise UserError(f"unknown CE dataset {dataset!r}; known: {', '.join(SPECS)}")
  return SPECS[dataset]
