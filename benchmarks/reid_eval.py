"""Time and peak memory of a full Market-1501-size re-id evaluation (dmlkit.metrics.reid).

The claim to check: the whole test protocol of Market-1501 -- 3,368 queries x 15,913 gallery
images, 1024-d features (MobileNet v1's last pooling layer), L2-normalised, Euclidean distance,
then CMC and mAP with the same-identity-same-camera removal -- runs in under 10 seconds on
2 CPU cores, in bounded memory (queries are ranked in chunks).

    python benchmarks/reid_eval.py                    # the full size, 2 threads, 3 repeats
    python benchmarks/reid_eval.py --queries 300 --gallery 1500 --repeats 1   # a quick check
    python benchmarks/reid_eval.py --device cuda --tag nvidia-h200           # on a GPU

Each repeat runs in a fresh process (so that its peak memory is its own): synthetic features
(751 identity centres + noise, 6 cameras, identity-0 distractors, seeded) are drawn, then timed:
``pairwise_distance`` (the [Nq, Ng] matrix), ``rank_queries`` (CMC + mAP) and their sum.
Memory: the process's resident set before the evaluation and its high-water mark after
(Linux /proc/self/status), i.e. what the evaluation adds; with ``--device cuda`` also the CUDA
allocator's peak. On a GPU the features are moved there before the clock starts, and one
small evaluation runs first, untimed, so that the CUDA start-up is not in the figure. The
first repeat also checks its result on the first ``--check`` queries against a plain per-query
numpy implementation.

Results: printed, and written to benchmarks/results/reid_eval-<tag>.{json,md} (--out). The
machine and thread count are recorded with them; timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dmlkit.machine import cpu_name

GOAL_SECONDS = 10.0


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _features(args: argparse.Namespace):
    """Synthetic query/gallery features, identities and cameras (seeded)."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    centres = torch.randn(args.ids + 1, args.dim, generator=g)
    g_pids = torch.randint(1, args.ids + 1, (args.gallery,), generator=g)
    n_distractors = args.gallery // 6  # Market-1501: 2,793 distractors among 15,913
    g_pids[:n_distractors] = 0
    q_pids = torch.randint(1, args.ids + 1, (args.queries,), generator=g)
    gallery = centres[g_pids] + args.noise * torch.randn(args.gallery, args.dim, generator=g)
    query = centres[q_pids] + args.noise * torch.randn(args.queries, args.dim, generator=g)
    g_cams = torch.randint(1, args.cameras + 1, (args.gallery,), generator=g)
    q_cams = torch.randint(1, args.cameras + 1, (args.queries,), generator=g)
    return query, gallery, q_pids, g_pids, q_cams, g_cams


def _reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int):
    """The protocol in plain numpy, one query at a time (slow; for checking only)."""
    import numpy as np

    cmc_sum, aps = np.zeros(max_rank), []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        match = (g_pids[order] == q_pids[i])[keep]
        if not match.any():
            continue
        first = int(np.argmax(match))
        cmc_sum[first:] += 1
        hits = np.cumsum(match)
        aps.append(float((hits[match] / (np.flatnonzero(match) + 1)).mean()))
    return cmc_sum / len(aps), float(np.mean(aps))


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from dmlkit.metrics.reid import pairwise_distance, rank_queries

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tensors = [t.to(device) for t in _features(args)]
    query, gallery, q_pids, g_pids, q_cams, g_cams = tensors
    if cuda:  # CUDA context, kernels and allocator warmed up outside the timed region
        warm = pairwise_distance(query[:64], gallery, args.metric, normalize=True)
        rank_queries(warm, q_pids[:64], g_pids, q_cams[:64], g_cams, 50, chunk_size=args.chunk)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    dist = pairwise_distance(query, gallery, args.metric, normalize=True)
    if cuda:
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    res = rank_queries(dist, q_pids, g_pids, q_cams, g_cams, 50, chunk_size=args.chunk)
    t2 = time.perf_counter()  # rank_queries returns numpy arrays: the GPU work is done
    out = {
        "distance_s": t1 - t0,
        "rank_s": t2 - t1,
        "total_s": t2 - t0,
        "rss_before_mib": rss_before / 1024 if rss_before else None,
        "peak_rss_mib": (_status_kib("VmHWM") or 0) / 1024 or None,
        "mAP": res.mAP,
        "rank1": float(res.cmc[0]),
        "valid_queries": res.num_valid,
        "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    }
    if args.check:
        n = min(args.check, args.queries)
        sub = rank_queries(dist[:n], q_pids[:n], g_pids, q_cams[:n], g_cams, 50)
        cmc, m_ap = _reference(
            dist[:n].cpu().numpy(),
            q_pids[:n].cpu().numpy(),
            g_pids.cpu().numpy(),
            q_cams[:n].cpu().numpy(),
            g_cams.cpu().numpy(),
            50,
        )
        out["check_queries"] = n
        out["check_max_abs_diff"] = max(abs(m_ap - sub.mAP), float(np.abs(cmc - sub.cmc).max()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=3368)
    p.add_argument("--gallery", type=int, default=15913)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--ids", type=int, default=750, help="test identities")
    p.add_argument("--cameras", type=int, default=6)
    p.add_argument("--noise", type=float, default=3.0, help="feature noise around the centres")
    p.add_argument("--metric", default="euclidean", choices=["euclidean", "sqeuclidean", "cosine"])
    p.add_argument("--threads", type=int, default=2, help="torch threads (the claim: 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--chunk", type=int, default=128, help="queries ranked at once")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check", type=int, default=200, help="queries checked against numpy (0: no)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--tag", default=None, help="file name tag (default: cpu<threads>)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    runs = []
    for i in range(args.repeats):
        cmd = [sys.executable, __file__, "--worker", *(argv if argv is not None else sys.argv[1:])]
        if i > 0:
            cmd += ["--check", "0"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(
            f"repeat {i + 1}/{args.repeats}: distance {r['distance_s']:.2f} s, ranking "
            f"{r['rank_s']:.2f} s, total {r['total_s']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} "
            f"MiB (before {r['rss_before_mib']:.0f} MiB)"
        )
    import torch

    totals = [r["total_s"] for r in runs]
    best = min(totals)
    result = {
        "benchmark": "reid_eval",
        "size": {"queries": args.queries, "gallery": args.gallery, "dim": args.dim},
        "metric": args.metric,
        "normalize": True,
        "chunk": args.chunk,
        "threads": args.threads,
        "device": args.device,
        "machine": {
            "gpu": torch.cuda.get_device_name(args.device) if args.device != "cpu" else None,
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "runs": runs,
        "total_s_best": best,
        "total_s_median": statistics.median(totals),
        "peak_added_mib_max": max(
            (r["peak_rss_mib"] or 0) - (r["rss_before_mib"] or 0) for r in runs
        ),
        "goal_s": GOAL_SECONDS,
        "meets_goal": best < GOAL_SECONDS,
        "check_max_abs_diff": runs[0].get("check_max_abs_diff"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tag = args.tag or (f"cpu{args.threads}" if args.device == "cpu" else args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"reid_eval-{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Re-id evaluation: {args.queries:,} queries x {args.gallery:,} gallery, "
        f"{args.dim}-d, {args.metric} (L2-normalised)",
        "",
        f"{result['machine']['gpu'] or result['machine']['cpu']}, {args.threads} torch "
        f"thread(s), device {args.device}, torch "
        f"{torch.__version__}; {args.repeats} repeat(s), each in a fresh process; "
        f"{result['date']}.",
        "",
        "| repeat | distance s | ranking s | total s | peak RSS MiB | added MiB |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        added = (r["peak_rss_mib"] or 0) - (r["rss_before_mib"] or 0)
        md.append(
            f"| {i} | {r['distance_s']:.2f} | {r['rank_s']:.2f} | {r['total_s']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {added:.0f} |"
        )
    md += [
        "",
        f"Best total {best:.2f} s, median {result['total_s_median']:.2f} s; goal < "
        f"{GOAL_SECONDS:.0f} s: {'met' if result['meets_goal'] else 'NOT met'}. "
        f"mAP {runs[0]['mAP']:.4f} over {runs[0]['valid_queries']:,} valid queries (synthetic "
        f"features).",
    ]
    if runs[0].get("cuda_peak_mib") is not None:
        md.append(f"CUDA allocator peak: {max(r['cuda_peak_mib'] for r in runs):.0f} MiB.")
    if result["check_max_abs_diff"] is not None:
        md.append(
            f"Checked on the first {runs[0]['check_queries']} queries against a per-query numpy "
            f"implementation: max |difference| {result['check_max_abs_diff']:.2e}."
        )
    (out / f"reid_eval-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: {out / f'reid_eval-{tag}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
