import gc

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device (run tests/gpu on the GPU machine)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not cuda:
                item.add_marker(skip)


def _release_the_gpu() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


@pytest.fixture(autouse=True)
def _free_the_gpu_around_each_test():
    """What earlier tests and their module fixtures left behind (models kept by reference cycles,
    the caching allocator's free blocks) goes back to the device before a test and again after it,
    so each test, and each process a test starts, finds the GPU as free as its own models leave it."""
    _release_the_gpu()
    yield
    _release_the_gpu()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Once a test's teardown has also finalized the module fixtures that the next test does not
    share (a model a module's tests kept), their memory goes back to the device too."""
    yield
    _release_the_gpu()
