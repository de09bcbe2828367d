"""A fp32 run on CUDA computes in IEEE fp32 (TF32 off) and gives the caller's TF32 settings back."""
import pytest
import torch

from camzoo.engine.accel import ieee_fp32

FLAGS = (torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")


@pytest.fixture
def tf32_on():
    saved = [getattr(m, a) for m, a in FLAGS]
    for m, a in FLAGS:
        setattr(m, a, True)
    yield
    for (m, a), v in zip(FLAGS, saved):
        setattr(m, a, v)


def test_tf32_is_off_inside_a_fp32_cuda_run_and_restored_after(tf32_on):
    with ieee_fp32(torch.device("cuda"), None):  # only flags are set: no GPU needed
        assert [getattr(m, a) for m, a in FLAGS] == [False, False]
    assert [getattr(m, a) for m, a in FLAGS] == [True, True]
    with pytest.raises(RuntimeError):
        with ieee_fp32(torch.device("cuda"), None):
            raise RuntimeError("a failing run")
    assert [getattr(m, a) for m, a in FLAGS] == [True, True]  # restored on failure too
    for device, amp in ((torch.device("cuda"), "bf16"), (torch.device("cpu"), None)):
        with ieee_fp32(device, amp):  # --amp runs and CPU runs leave the user's settings
            assert [getattr(m, a) for m, a in FLAGS] == [True, True]
