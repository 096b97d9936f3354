"""The benchmark's scenario list over the shared datasets (see issue 4)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from shardguard.bench import attacks

RATES = (0.005, 0.01, 0.05, 0.10)
INSTRUCTION_RATES = (0.01, 0.05)
ALPACA_TEMPLATE = "{instruction}\n{input}\n{output}"


@dataclass
class LabelledData:
    name: str
    ids: list[str]
    texts: list[str]
    labels: list[str]
    dev_texts: list[str] | None = None
    dev_labels: list[str] | None = None
    test_texts: list[str] | None = None
    test_labels: list[str] | None = None
    target: str | None = None


def _read(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


def load_labelled(data_dir: str | Path, name: str) -> LabelledData:
    d = Path(data_dir)
    if name == "sst2":
        base, target = d / "sst2_thunlp_clean", "1"
    elif name == "ag_news":
        base, target = d / "ag_news_thunlp", "0"
    elif name == "sms_spam":
        t = _read(d / "sms_spam" / "sms_spam.parquet")
        return LabelledData(name, t["id"], t["text"], [str(v) for v in t["label"]])
    else:
        raise ValueError(name)
    tr, dv, te = (_read(base / f"{s}.parquet") for s in ("train", "dev", "test"))
    s = lambda v: [str(x) for x in v]  # noqa: E731
    return LabelledData(name, tr["id"], tr["text"], s(tr["label"]), dv["text"], s(dv["label"]),
                        te["text"], s(te["label"]), target)


def load_alpaca(data_dir: str | Path) -> tuple[list[str], dict[str, list[str]]]:
    t = _read(Path(data_dir) / "alpaca_subset5k" / "alpaca_5000.parquet")
    return t["id"], {k: [v or "" for v in t[k]] for k in ("instruction", "input", "output")}


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def labelled_scenarios(data: LabelledData, rates=RATES) -> list[attacks.Scenario]:
    a = (data.ids, data.texts, data.labels)
    out = [attacks.clean(data.ids, data.texts, data.labels, dataset=data.name)]
    if data.target is None:
        return out
    for rate in rates:
        for fn in (attacks.badnets, attacks.addsent):
            out.append(fn(*a, target=data.target, rate=rate, dataset=data.name,
                          seed=seed_of(f"{data.name}/{fn.__name__}")))
    out.append(attacks.label_flips(*a, rate=0.05, dataset=data.name, seed=seed_of(f"{data.name}/flips")))
    out.append(attacks.flood(*a, target=data.target, dataset=data.name, seed=seed_of(f"{data.name}/flood")))
    return out


def instruction_scenarios(ids, columns, rates=INSTRUCTION_RATES, dataset: str = "alpaca") -> list[attacks.Scenario]:
    out = [attacks.clean(ids, columns=columns, dataset=dataset)]
    for rate in rates:
        out.append(attacks.content_injection(ids, columns, rate=rate, dataset=dataset,
                                             seed=seed_of(f"{dataset}/mcd/{rate}")))
        out.append(attacks.fixed_response(ids, columns, rate=rate, dataset=dataset,
                                          seed=seed_of(f"{dataset}/bond/{rate}")))
    return out


def scenario_texts(sc: attacks.Scenario) -> list[str]:
    return sc.texts if sc.texts is not None else attacks.render(sc.columns, ALPACA_TEMPLATE)


def all_scenarios(data_dir, quick: bool = False):
    """(scenario, LabelledData or None) pairs in benchmark order."""
    out = []
    rates = (0.01, 0.05) if quick else RATES
    data = load_labelled(data_dir, "sst2")
    out += [(sc, data) for sc in labelled_scenarios(data, rates)]
    ids, cols = load_alpaca(data_dir)
    out += [(sc, None) for sc in instruction_scenarios(ids, cols, (0.01,) if quick else INSTRUCTION_RATES)]
    if not quick:
        sms = load_labelled(data_dir, "sms_spam")
        out += [(sc, sms) for sc in labelled_scenarios(sms)]
        data = load_labelled(data_dir, "ag_news")
        out += [(sc, data) for sc in labelled_scenarios(data, rates)]
    return out
