"""Deployment forms: one model prepared the way people deploy it, checked against eager.

Each form is a small transformation of a deep copy of the model (the caller's
model is never touched), made once, run once on the input and compared with
the eager outputs before anything is timed:

* ``eager``: the model as it is (in eval mode).
* ``fused``: conv-BN folding: every ``Conv2d`` directly followed by a
  ``BatchNorm2d`` inside an ``nn.Sequential`` (every ``ConvBN``) gets the folded
  weight and a bias, and the BN becomes ``nn.Identity``. A BN after a concat
  (YOLOv5's ``BottleneckCSP``) has no conv to fold into and is left alone.
* ``channels_last``: model and input in ``torch.channels_last`` memory format.
* ``torchscript``: ``torch.jit.trace`` on the input, then ``torch.jit.freeze``.
* ``onnxruntime``: exported to ONNX (through a temporary file), run by an ``onnxruntime.InferenceSession``.
* ``compile``: ``torch.compile`` (inductor, default mode); its first call, where
  compilation happens, counts as preparation: each input shape compiles anew.
* ``fp16``, ``bf16``: CUDA autocast around the eager forward.

Each form is registered once in ``FORMS`` (a ``Form``: name, maker, tolerance,
availability check, whether its first call prepares it); adding a form is one
maker function and one ``register_form`` call.

``prepare_form`` returns a ``PreparedForm`` whose ``call`` is one forward on the
prepared input, to be timed inside ``torch.inference_mode()`` (and
``cpu_threads(threads)`` on CPU), or raises ``FormError`` with a one-line reason.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archbench.capture import captured_output
from archbench.components import ComponentRegistry
from archbench.errors import ArchbenchError
from archbench.folding import fold_conv_bn
from archbench.profilers.latency import cpu_threads

# Largest accepted max |form - eager| / max |eager| (per output tensor, worst output).
# fp32 forms compute the same maths in another order (folded weights, other kernels,
# fused pointwise ops): a few float32 ulps per op, accumulated over ~100 layers, stays
# well below 1e-4 of the output range (measured: 1e-7 to 1e-6 on PicoDet and
# ShuffleNetV2). fp16 keeps 11 significant bits (unit roundoff 4.9e-4) and bf16 8
# (3.9e-3); through a deep network the outputs drift by a few roundoffs: 1e-2 and 5e-2.
FP32_TOLERANCE = 1e-4

ONNX_OPSET = 17
ONNX_INSTALL_HINT = "onnxruntime is not installed (pip install 'archbench[onnx]')"


class FormError(ArchbenchError):
    """A deployment form that could not be made, or whose outputs diverge from eager."""


@dataclass(frozen=True)
class PreparedForm:
    """A model in one deployment form, checked against eager, ready to time."""

    name: str
    call: Callable[[], object]  # one forward on the prepared input
    prepare_s: float  # seconds to make the form (export, trace + freeze, compile incl. its first call)
    max_abs_err: float  # max |form - eager| over all outputs
    max_rel_err: float  # vs eager: max |form - eager| / max |eager|, worst output tensor
    tolerance: float
    note: str


@dataclass
class _Made:
    call: Callable[[], object]
    note: str
    outputs: Callable[[object], list[torch.Tensor]] | None = None  # call()'s result as tensors


Maker = Callable[[nn.Module, torch.Tensor, int], _Made]
"""Makes a form of a deep copy of the model for input ``x`` at ``threads`` threads."""


def _runs_anywhere(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Form:
    """A deployment form, registered once.

    Attributes:
        name: What ``--forms`` calls it.
        make: Builds the form (a ``Maker``).
        tolerance: Largest accepted max relative error against eager.
        unavailable: Why the form cannot run on a device here (None if it can).
        first_call_prepares: Its first call does the real work (compiling): it counts
            as preparation, not as the cold call.
    """

    name: str
    make: Maker
    tolerance: float = FP32_TOLERANCE
    unavailable: Callable[[torch.device], str | None] = _runs_anywhere
    first_call_prepares: bool = False


FORMS = ComponentRegistry[Form]("form")


def register_form(form: Form) -> Form:
    """Add a deployment form (``ValueError`` if the name is taken)."""
    return FORMS.register(form.name, form)


def check_forms(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple, or ``ArchbenchError`` for one that is not a form."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        FORMS.get(name)
    return tuple(names)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def _cxx_compiler() -> str | None:
    return next((found for cc in ("c++", "g++", "clang++") if (found := shutil.which(cc))), None)


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why form ``name`` cannot run on ``device`` here, or ``None`` if it can."""
    form = FORMS.get(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    return form.unavailable(device)


# -- making each form ------------------------------------------------------------
def _make_eager(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
    return _Made(lambda: model(x), "the model as built, eval mode")


def _make_fused(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
    folded, left = fold_conv_bn(model)
    why = " (not directly after a conv in a Sequential)" if left else ""
    return _Made(lambda: model(x), f"folded {folded} BatchNorms into convs; {left} left{why}")


def _make_channels_last(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x_cl = x.contiguous(memory_format=torch.channels_last)
    return _Made(lambda: model(x_cl), "model and input in torch.channels_last")


def _make_torchscript(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
    # torch.jit.optimize_for_inference (MKLDNN conversions) measured slower than plain
    # freeze on these models on CPU (PicoDet-S at 320, 1 thread: 22.9 vs 20.4 ms), so it is not used.
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), strict=False)
        frozen = torch.jit.freeze(traced)
    return _Made(lambda: frozen(x), "torch.jit.trace + torch.jit.freeze (no optimize_for_inference)")


def _onnx_bytes(model: nn.Module, x: torch.Tensor) -> tuple[bytes, str]:
    """The model as ONNX bytes, and which exporter made them.

    The TorchScript-based exporter (``dynamo=False``) is tried first: it needs no
    onnxscript and takes about 1 s where the torch.export-based one takes 5-10 s on
    these models. The torch.export one (needs onnxscript) is the fallback, for a
    torch that has dropped the legacy exporter or a model it cannot trace.
    """
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="archbench-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=ONNX_OPSET)
            return path.read_bytes(), f"TorchScript exporter (dynamo=False), opset {ONNX_OPSET}"
        except Exception as legacy_error:
            if not _installed("onnxscript"):
                raise
            try:
                program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            except Exception:
                raise legacy_error from None
            assert program is not None
            proto = program.model_proto
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), "?")
            return proto.SerializeToString(), f"torch.export exporter (dynamo=True), opset {opset}"


def _make_onnxruntime(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
    import numpy as np
    import onnxruntime as ort

    data, exporter = _onnx_bytes(model, x)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    cuda = x.device.type == "cuda"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(data, options, providers=providers)
    input_name = session.get_inputs()[0].name
    note = (f"{exporter}; onnxruntime {ort.__version__} {providers[0]}, ORT_ENABLE_ALL, "
            f"{threads} intra-op thread(s), 1 inter-op")
    if not cuda:
        feed = {input_name: x.detach().cpu().numpy()}
        return _Made(lambda: session.run(None, feed), note)
    # On CUDA the input stays on the GPU and outputs are left there (I/O binding), as for eager.
    x_gpu = x.detach().contiguous()
    binding = session.io_binding()
    binding.bind_input(name=input_name, device_type="cuda", device_id=x.device.index or 0,
                       element_type=np.float32, shape=tuple(x_gpu.shape), buffer_ptr=x_gpu.data_ptr())
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", x.device.index or 0)

    def call(keep_alive: torch.Tensor = x_gpu) -> object:  # the bound buffer must outlive the session's use
        session.run_with_iobinding(binding)
        return binding

    def outputs(_: object) -> list[torch.Tensor]:
        return [torch.from_numpy(a) for a in binding.copy_outputs_to_cpu()]

    return _Made(call, f"{note}, input and outputs bound on the GPU", outputs)


def _make_compile(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
    # A fresh dynamo state per form: without it, compiling the same forward for many
    # models and shapes hits dynamo's recompile limit, after which it silently runs eager.
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="default", dynamic=False)
    return _Made(lambda: compiled(x), "torch.compile(mode='default', dynamic=False), inductor; "
                                      "prepare_s includes compiling at this input shape")


def _make_autocast(dtype: torch.dtype) -> Callable[[nn.Module, torch.Tensor, int], _Made]:
    def make(model: nn.Module, x: torch.Tensor, threads: int) -> _Made:
        def call() -> object:
            with torch.autocast("cuda", dtype=dtype):
                return model(x)

        return _Made(call, f"torch.autocast('cuda', dtype={dtype}) around the eager forward")

    return make


def _onnxruntime_unavailable(device: torch.device) -> str | None:
    if not _installed("onnxruntime"):
        return ONNX_INSTALL_HINT
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
    return None


def _compile_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda" and _cxx_compiler() is None:
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++)"
    if device.type == "cuda" and not _installed("triton"):
        return "torch.compile on CUDA needs triton"
    return None


def _autocast_unavailable(dtype: torch.dtype) -> Callable[[torch.device], str | None]:
    def why(device: torch.device) -> str | None:
        if device.type != "cuda":
            return "needs CUDA (a CUDA autocast form)"
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
        return None

    return why


register_form(Form("eager", _make_eager))
register_form(Form("fused", _make_fused))
register_form(Form("channels_last", _make_channels_last))
register_form(Form("torchscript", _make_torchscript))
register_form(Form("onnxruntime", _make_onnxruntime, unavailable=_onnxruntime_unavailable))
register_form(Form("compile", _make_compile, unavailable=_compile_unavailable, first_call_prepares=True))
register_form(Form("fp16", _make_autocast(torch.float16), 1e-2, _autocast_unavailable(torch.float16)))
register_form(Form("bf16", _make_autocast(torch.bfloat16), 5e-2, _autocast_unavailable(torch.bfloat16)))


# -- checking ------------------------------------------------------------------
def _tensors(output: object) -> list[torch.Tensor]:
    """A forward's outputs as a flat list of float32 CPU tensors."""
    if isinstance(output, torch.Tensor):
        return [output.detach().float().cpu()]
    if isinstance(output, list | tuple):
        return [t for item in output for t in _tensors(item)]
    if hasattr(output, "__array__"):  # onnxruntime's numpy outputs
        return [torch.from_numpy(output.__array__()).float()]
    raise TypeError(f"output is not a tensor or a list of tensors: {type(output).__name__}")


def compare_outputs(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(max abs error, max relative error)``; relative is max |a - e| / max |e| per
    output tensor, the worst output's. NaN anywhere gives NaN."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(actual)} outputs where eager gives {len(expected)}")
    max_abs, max_rel = 0.0, 0.0
    for e, a in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            raise ValueError(f"output shape {tuple(a.shape)} where eager gives {tuple(e.shape)}")
        if e.numel() == 0:
            continue
        diff = (a.double() - e.double()).abs().max().item()
        scale = e.double().abs().max().item()
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        if diff != diff or rel != rel:
            return float("nan"), float("nan")
        max_abs, max_rel = max(max_abs, diff), max(max_rel, rel)
    return max_abs, max_rel


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return text or type(exc).__name__


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_form(name: str, model: nn.Module, x: torch.Tensor, *, threads: int = 1) -> PreparedForm:
    """Make deployment form ``name`` of ``model`` for input ``x``, check it against eager.

    Works on deep copies in eval mode; ``model`` is never changed. The form is run once
    under ``torch.inference_mode`` and every output tensor compared with eager's.

    Args:
        threads: intra-op threads the form will be timed with. onnxruntime's session
            is built with them and torch.compile generates its CPU kernels under them,
            so time ``call`` inside ``cpu_threads(threads)``.

    Raises:
        FormError: the form is unavailable here, could not be made, or its largest
            relative error exceeds the form's tolerance.
    """
    form = FORMS.get(name)
    reason = unavailable_reason(name, x.device)
    if reason is not None:
        raise FormError(f"{name} unavailable: {reason}")
    threads_context = cpu_threads(threads) if x.device.type == "cpu" else nullcontext(threads)
    with captured_output(every_logger=True), threads_context:
        try:
            reference = copy.deepcopy(model).eval()
            with torch.inference_mode():
                expected = _tensors(reference(x))
            del reference
            working = copy.deepcopy(model).eval()
            _synchronize(x.device)
            started = time.perf_counter()
            made = form.make(working, x, threads)
            if form.first_call_prepares:
                with torch.inference_mode():
                    made.call()
                _synchronize(x.device)
            prepare_s = time.perf_counter() - started
            with torch.inference_mode():
                result = made.call()
            actual = made.outputs(result) if made.outputs is not None else _tensors(result)
            max_abs, max_rel = compare_outputs(expected, actual)
        except Exception as exc:
            raise FormError(f"{name} failed: {_first_line(exc)}") from exc
    tolerance = form.tolerance
    if not max_rel <= tolerance:  # NaN fails too
        raise FormError(f"{name} diverges from eager: max relative error {max_rel:.1e} > tolerance {tolerance:.0e}")
    return PreparedForm(name=name, call=made.call, prepare_s=prepare_s, max_abs_err=max_abs,
                        max_rel_err=max_rel, tolerance=tolerance, note=made.note)

