"""mLSTM with sigmoid input gate (mLSTMsig), forward by Tiled Flash Linear Attention: Triton + references."""

from mmchar.kernels.mlstm.reference import mlstm_eager, mlstm_parallel_ref, mlstm_recurrent_ref

__all__ = ["mlstm", "mlstm_eager", "mlstm_parallel_ref", "mlstm_recurrent_ref"]


def __getattr__(name: str):
    if name == "mlstm":  # imports triton: only when asked for
        from mmchar.kernels.mlstm.kernel import mlstm

        return mlstm
    raise AttributeError(name)
