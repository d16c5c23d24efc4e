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

``prepare_form`` returns a ``PreparedForm`` whose ``call`` is one forward on the
prepared input, to be timed inside ``torch.inference_mode()`` (and
``cpu_threads(threads)`` on CPU), or raises ``FormError`` with a one-line reason.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archbench.errors import ArchbenchError
from archbench.profilers.latency import cpu_threads

FORMS: tuple[str, ...] = ("eager", "fused", "channels_last", "torchscript", "onnxruntime", "compile", "fp16", "bf16")

# Largest accepted max |form - eager| / max |eager| (per output tensor, worst output).
# fp32 forms compute the same maths in another order (folded weights, other kernels,
# fused pointwise ops): a few float32 ulps per op, accumulated over ~100 layers, stays
# well below 1e-4 of the output range (measured: 1e-7 to 1e-6 on PicoDet and
# ShuffleNetV2). fp16 keeps 11 significant bits (unit roundoff 4.9e-4) and bf16 8
# (3.9e-3); through a deep network the outputs drift by a few roundoffs: 1e-2 and 5e-2.
TOLERANCES: dict[str, float] = {
    "eager": 1e-4,
    "fused": 1e-4,
    "channels_last": 1e-4,
    "torchscript": 1e-4,
    "onnxruntime": 1e-4,
    "compile": 1e-4,
    "fp16": 1e-2,
    "bf16": 5e-2,
}

ONNX_OPSET = 17
ONNX_INSTALL_HINT = "onnxruntime is not installed (pip install 'archbench[onnx]')"
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


def check_forms(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple, or ``ArchbenchError`` for one that is not a form."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in FORMS:
            raise ArchbenchError(f"unknown form {name!r}; choose from {', '.join(FORMS)}")
    return tuple(names)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def _cxx_compiler() -> str | None:
    return next((found for cc in ("c++", "g++", "clang++") if (found := shutil.which(cc))), None)


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why form ``name`` cannot run on ``device`` here, or ``None`` if it can."""
    check_forms([name])
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        return "CUDA is not available"
    if name in AUTOCAST_DTYPES:
        if not cuda:
            return "needs CUDA (a CUDA autocast form)"
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
    if name == "onnxruntime":
        if not _installed("onnxruntime"):
            return ONNX_INSTALL_HINT
        if cuda:
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
    if name == "compile":
        if not cuda and _cxx_compiler() is None:
            return "torch.compile on CPU needs a C++ compiler (g++ or clang++)"
        if cuda and not _installed("triton"):
            return "torch.compile on CUDA needs triton"
    return None


# -- fused: conv-BN folding ----------------------------------------------------
def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Give ``conv`` the weight and bias of conv followed by ``bn`` in eval mode (computed in float64)."""
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        scale = (bn.running_var.double() + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shift = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def fold_conv_bn(model: nn.Module) -> tuple[int, int]:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential``.

    The conv takes the folded weight and bias, the BN becomes ``nn.Identity``. A conv
    used in more than one place is left alone (folding would change its other uses).
    Returns ``(folded, left)``: BNs folded and BatchNorm modules of any kind left.
    """
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    folded = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(sequential._modules.items())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if conv is None or bn is None or not _foldable(conv, bn) or uses[id(conv)] > 1:
                continue
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            _fold_into(conv, bn)
            sequential._modules[bn_name] = nn.Identity()
            folded += 1
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return folded, left


# -- making each form ------------------------------------------------------------
@dataclass
class _Made:
    call: Callable[[], object]
    note: str
    outputs: Callable[[object], list[torch.Tensor]] | None = None  # call()'s result as tensors


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


_MAKERS: dict[str, Callable[[nn.Module, torch.Tensor, int], _Made]] = {
    "eager": _make_eager,
    "fused": _make_fused,
    "channels_last": _make_channels_last,
    "torchscript": _make_torchscript,
    "onnxruntime": _make_onnxruntime,
    "compile": _make_compile,
    "fp16": _make_autocast(torch.float16),
    "bf16": _make_autocast(torch.bfloat16),
}
# Forms whose real work happens on the first call: it counts as preparation.
_FIRST_CALL_PREPARES = frozenset({"compile"})


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


@contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Capture warnings (TorchScript deprecation, TracerWarning, exporter chatter) and
    hold back torch's log records below ERROR (exporter and compiler logs)."""
    previous_disable = logging.root.manager.disable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logging.disable(logging.WARNING)
        try:
            yield caught
        finally:
            logging.disable(previous_disable)


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
            relative error exceeds ``TOLERANCES[name]``.
    """
    check_forms([name])
    reason = unavailable_reason(name, x.device)
    if reason is not None:
        raise FormError(f"{name} unavailable: {reason}")
    threads_context = cpu_threads(threads) if x.device.type == "cpu" else nullcontext(threads)
    with _quiet(), threads_context:
        try:
            reference = copy.deepcopy(model).eval()
            with torch.inference_mode():
                expected = _tensors(reference(x))
            del reference
            working = copy.deepcopy(model).eval()
            _synchronize(x.device)
            started = time.perf_counter()
            made = _MAKERS[name](working, x, threads)
            if name in _FIRST_CALL_PREPARES:
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
    tolerance = TOLERANCES[name]
    if not max_rel <= tolerance:  # NaN fails too
        raise FormError(f"{name} diverges from eager: max relative error {max_rel:.1e} > tolerance {tolerance:.0e}")
    return PreparedForm(name=name, call=made.call, prepare_s=prepare_s, max_abs_err=max_abs,
                        max_rel_err=max_rel, tolerance=tolerance, note=made.note)

