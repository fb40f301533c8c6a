# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""How tight can the FID ratio's interval be? (digits family, held-out features cached by verify_digits.py)

For a few plans, on the held-out features of ``--seeds`` (pooled, sample ``i`` of a plan paired with sample
``i`` of digits-xl alone), the 95% interval of the FID ratio to digits-xl alone by:

* the paired bootstrap, bias-corrected (what verification uses), and without the correction;
* an unpaired bootstrap (independent indices for the plan and the reference: what pairing buys);
* the paired bootstrap with the 1,797 real digits resampled as well (the real set's share of the width);
* the delete-a-group jackknife (10 groups);
* independent seed sets (the samples cut into sets of 500, a Student-t interval over the sets' ratios);

and the paired interval's half-width against the number of samples (the first n of the pool), with the
``c / sqrt(n)`` fit (from 1,500 samples up) and the samples it would take to reach half-widths of 2% and 5%.

    PYTHONPATH=src python benchmarks/tune/interval_study.py --seeds 1000 1001
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from tstitch.tune.stats import (
    _fid,
    gaussian_statistics,
    interval_from_sets,
    jackknife_fid_ratio,
    paired_fid_ratio,
)
from tstitch.utils import write_json

HERE = Path(__file__).parent
PLANS = ("S8_XL12", "S10_XL10", "S11_XL9", "S6_XL14")


def bootstrap(features: torch.Tensor, reference: torch.Tensor, real: torch.Tensor, *, paired: bool = True,
              resample_real: bool = False, correct: bool = True, resamples: int = 300,
              seed: int = 0) -> tuple[float, float]:
    """A 95% percentile interval of the FID ratio under the chosen resampling."""
    generator = torch.Generator().manual_seed(seed)
    real_statistics = gaussian_statistics(real)
    fid, reference_fid = _fid(features, real_statistics), _fid(reference, real_statistics)
    plan_values, reference_values = [], []
    n = len(features)
    for _ in range(resamples):
        index = torch.randint(n, (n,), generator=generator)
        other = index if paired else torch.randint(n, (n,), generator=generator)
        statistics = real_statistics
        if resample_real:
            statistics = gaussian_statistics(real[torch.randint(len(real), (len(real),), generator=generator)])
        plan_values.append(_fid(features[index], statistics))
        reference_values.append(_fid(reference[other], statistics))
    plan = torch.tensor(plan_values, dtype=torch.float64)
    ref = torch.tensor(reference_values, dtype=torch.float64)
    if correct:
        plan += fid - plan.mean()
        ref += reference_fid - ref.mean()
    low, high = torch.quantile(plan / ref, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--samples", type=int, default=3000, help="samples per seed in the cache")
    parser.add_argument("--cache", default="/tmp/tstitch-tune-verify")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "interval_study.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tstitch.zoo import load_classifier
    from tstitch.zoo.data import load_digits_tensors

    digits, _ = load_digits_tensors()
    with torch.no_grad():
        real = load_classifier().features(digits).double()

    def pooled(name: str) -> torch.Tensor | None:
        paths = [Path(args.cache) / f"seed{s}-n{args.samples}" / f"{name}.pt" for s in args.seeds]
        if not all(p.exists() for p in paths):
            return None
        return torch.cat([torch.load(p, weights_only=True) for p in paths]).double()

    reference = pooled("XL20")
    results = {"what": __doc__.splitlines()[0], "seeds": args.seeds, "num_samples": len(reference),
               "real_samples": len(real), "resamples": 300, "plans": {}}
    real_statistics = gaussian_statistics(real)
    for name in PLANS:
        features = pooled(name)
        if features is None:
            continue
        paired = paired_fid_ratio(features, reference, real_statistics, resamples=300)
        row = {"ratio": paired.ratio, "fid": _fid(features, real_statistics),
               "reference_fid": _fid(reference, real_statistics),
               "paired_bootstrap_corrected": [paired.low, paired.high],
               "paired_bootstrap_uncorrected": list(bootstrap(features, reference, real, correct=False)),
               "unpaired_bootstrap_corrected": list(bootstrap(features, reference, real, paired=False)),
               "paired_bootstrap_real_resampled": list(bootstrap(features, reference, real, resample_real=True))}
        jack = jackknife_fid_ratio(features, reference, real_statistics, groups=10)
        row["jackknife_10"] = [jack.low, jack.high]
        sets = [_fid(f, real_statistics) / _fid(r, real_statistics)
                for f, r in zip(features.split(500), reference.split(500), strict=True)]
        by_sets = interval_from_sets(sets)
        row["seed_sets_of_500"] = {"mean": by_sets.ratio, "interval": [by_sets.low, by_sets.high],
                                   "sets": len(sets)}
        widths = {}
        n = 750
        while n <= len(features):
            estimate = paired_fid_ratio(features[:n], reference[:n], real_statistics, resamples=300)
            widths[n] = (estimate.high - estimate.low) / 2
            n *= 2
        if len(features) not in widths:
            widths[len(features)] = (paired.high - paired.low) / 2
        # below ~1,500 samples the width shrinks faster than 1/sqrt(n) (the FIDs' small-sample bias): fit above
        fitted = {n: w for n, w in widths.items() if n >= 1500} or widths
        constant = sum(w * math.sqrt(n) for n, w in fitted.items()) / len(fitted)
        row["half_width_by_samples"] = {str(k): v for k, v in sorted(widths.items())}
        row["half_width_fit_c_over_sqrt_n"] = constant
        row["samples_for_half_width"] = {"0.02": round((constant / 0.02) ** 2), "0.05": round((constant / 0.05) ** 2)}
        results["plans"][name.replace("_", " > ")] = row
        print(name, json.dumps(row, indent=None)[:400])
    write_json(args.out, results)


if __name__ == "__main__":
    main()
