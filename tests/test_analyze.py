"""`mmchar analyze` on a trace recorded by plain torch.profiler (not by mmchar): attributed by aten op, by the
profiler's module events and by ProfilerStep, written as a run that export, study and the dashboard read."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, schedule

from mmchar.cli import main
from mmchar.store import load_runs


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(32, 96)
        self.ctx = torch.nn.Linear(16, 64)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        q, k, v = self.proj(x).view(2, -1, 3, 4, 8).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # self: 40 tokens against 40
        tk, tv = self.ctx(text).view(2, -1, 2, 4, 8).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(x, tk, tv)  # cross: 40 against 7 text tokens


def _record(path, modules: bool) -> None:
    torch.manual_seed(0)
    m, x, text = Block(), torch.randn(2, 40, 32), torch.randn(2, 7, 16)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                                         with_stack=modules, with_modules=modules,
                                         schedule=schedule(wait=0, warmup=1, active=2),
                                         on_trace_ready=lambda prof: prof.export_chrome_trace(str(path))) as p:
        for _ in range(3):
            m(x, text)
            p.step()


def test_a_plain_torch_profiler_trace_becomes_a_run(tmp_path, capsys):
    trace = tmp_path / "my model.json"
    _record(trace, modules=True)
    assert main(["analyze", str(trace), "--store", str(tmp_path / "s"), "--stage", "denoiser"]) == 0
    out = capsys.readouterr().out
    assert "op-class shares" in out and "top aten ops" in out and "run folder" in out
    (run,) = load_runs([tmp_path / "s"])
    assert run.workload == "my-model" and run.backend == "foreign" and run.meta["timings"] == {}
    assert run.trace_path is not None and run.trace_path.is_file()  # a gzip copy: Perfetto / TensorBoard open it
    k = run.kernels
    assert set(k["stage"].astype(str)) == {"denoiser"}
    assert len(set(k["step"])) == 2  # ProfilerStep#1 and #2 (the warm-up step is not recorded)
    att = k[k["op_class"].astype(str) == "attention"]
    assert set(att["attn_site"].astype(str)) >= {"cross"} and len(set(att["attn_site"].astype(str))) == 2
    assert (k.loc[k["aten_op"].astype(str) == "aten::linear", "module_path"].astype(str)
            .str.startswith("Block_0.Linear_").all())
    assert main(["export", str(tmp_path / "s"), "-o", str(tmp_path / "b.csv")]) == 0


def test_without_module_events_it_says_so_and_bad_input_is_one_line(tmp_path, capsys):
    trace = tmp_path / "t.json"
    _record(trace, modules=False)
    assert main(["analyze", str(trace), "--store", str(tmp_path / "s")]) == 0
    assert "no nn.Module events" in capsys.readouterr().err
    (tmp_path / "cut.json").write_bytes(trace.read_bytes()[:200])
    assert main(["analyze", str(tmp_path / "cut.json"), "--store", str(tmp_path / "s")]) == 1
    assert main(["analyze", str(trace), "--stage", "nope", "--store", str(tmp_path / "s")]) == 1
    (tmp_path / "empty.json").write_text('{"traceEvents": []}')
    assert main(["analyze", str(tmp_path / "empty.json"), "--store", str(tmp_path / "s")]) == 1
    (tmp_path / "bad.json").write_text('{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm"}]}')
    assert main(["analyze", str(tmp_path / "bad.json"), "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "truncated or not JSON" in err and "valid stages: text_encoder" in err
    assert "holds no CPU ops or GPU kernels" in err and "not a well-formed profiler trace" in err
    assert main(["analyze", str(trace), "--name", "team/model v2", "--store", str(tmp_path / "n")]) == 0
    assert load_runs([tmp_path / "n"])[0].workload == "team-model-v2"  # a run id is a folder name
    assert len(load_runs([tmp_path / "s"])) == 1  # the failures left no run folder behind
    # names are checked before the first trace is written (a re-run then duplicated it); a folder is named so
    assert main(["analyze", str(trace), str(tmp_path / "missing.json"), "--store", str(tmp_path / "s")]) == 1
    assert main(["analyze", str(tmp_path), "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "missing.json does not exist" in err and "is a folder; pass the .json" in err
    (tmp_path / "afile").write_text("")
    assert main(["analyze", str(trace), "--store", str(tmp_path / "afile")]) == 1  # was "unexpected FileExistsError"
    (run,) = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    assert main(["analyze", str(trace), "--store", str(run)]) == 1  # a store inside a run folder
    err = capsys.readouterr().err
    assert "is not a folder" in err and "run folder" in err and "unexpected" not in err
    assert len(load_runs([tmp_path / "s"])) == 1
