import pytest
import torch

from fullgraph.model import LlamaConfig, init_params


@pytest.fixture(autouse=True)
def _isolated_dynamo():
    # Each test compiles from scratch and leaves nothing compiled behind for the next one.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def highest_precision():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.fixture(scope="session")
def tiny_cfg() -> LlamaConfig:
    return LlamaConfig.from_name("tiny")


@pytest.fixture
def tiny_params(tiny_cfg):
    return init_params(tiny_cfg, seed=0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
