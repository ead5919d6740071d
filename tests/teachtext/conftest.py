import pytest

from configs import teachtext as teachtext_config
from vtd.teachtext.data import synthetic_retrieval


@pytest.fixture(scope="session")
def tiny_data():
  spec = synthetic_retrieval.SyntheticRetrievalSpec(num_train=48, num_val=16, num_test=16,
                                                    num_concepts=32)
  return synthetic_retrieval.generate(spec)


@pytest.fixture
def smoke_config():
  return teachtext_config.get_config("smoke")
