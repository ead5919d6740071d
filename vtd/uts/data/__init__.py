"""UTS data: the FIVR annotation / id-list readers, the embedded FIVR-like video generator
(+ its renderer) and the labelled source-domain images the teacher is pretrained on."""
