"""The report of bench/run_l2b_delivery.py: the table (median and best run per variant and RTT) and every run."""

from __future__ import annotations

import statistics

from bench.l2b_delivery_runs import TARGET_SHARE, Result

VARIANT_NAMES = {
    "processes": "{w} processes sharing {l}/{win:g}s through leases in the state store — the DAG's shape",
    "static": "{w} processes, static share each ({b}/{win:g}s) — the former DAG shape (context)",
    "threads": "1 process = one task for all chunks: {w} chunk threads, one shared limiter ({l}/{win:g}s), "
               "started together (context)",
    "unpaced": "{w} processes, no limit (machine ceiling, context)",
}
CONTEXT_VARIANTS = {"threads", "unpaced", "static"}


def _median_run(runs: list[Result]) -> Result:
    ok = sorted((r for r in runs if not r.error and r.span), key=lambda r: r.rate)
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def _starts(r: Result) -> str:
    return ", ".join(f"{o:g}" for o in r.offsets)


def table(results: dict[tuple[str, float], list[Result]], args) -> str:
    head = ["variant", "added RTT", "starts (s after GO)", "runs", "requests", "span, median run (s)",
            "achieved req/s (median / best)", "share of limit (median / best)", "pacing bound (static budgets)",
            "steady-state fill, all sending (median)",
            f"busiest {args.window:g}-s window: client sends / sandbox arrivals (max)",
            "429s at the sandbox", "retries", "other processes' CPU (cores)", "1-min load", "profiles = changes", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for (variant, rtt), runs in results.items():
        name = VARIANT_NAMES[variant].format(w=args.workers, b=max(1, args.limit // args.workers), l=args.limit,
                                             win=args.window)
        ok = [r for r in runs if not r.error and r.span]
        if not ok:
            err = next((r.error for r in runs if r.error), "no successful run")
            lines.append("| " + " | ".join([name, f"{rtt:g} ms", "", str(len(runs)), *["—"] * (len(head) - 6),
                                            f"error: {err[:100]}"]) + " |")
            continue
        med = _median_run(ok)
        bestr = max(ok, key=lambda r: r.rate)
        unpaced = variant == "unpaced"
        context = variant in CONTEXT_VARIANTS
        target = "(context)" if context else f"share ≥ {TARGET_SHARE:.0%}, 0 × 429"
        if unpaced:
            share = bound = steady = "—"
        else:
            share = f"**{med.share:.1%}** / {bestr.share:.1%}"
            bound = f"{med.bound:.1%}"
            steadies = [r.steady for r in ok if r.steady is not None]
            steady = (f"{statistics.median(steadies):.1%} ({med.steady_seconds:.2f} s)" if steadies
                      else "— (never all sending)")
        busiest = max(r.busiest for r in ok)
        servers = [r.busiest_server for r in ok if r.busiest_server is not None]
        good = (med.share >= TARGET_SHARE and all(r.rate_limited == 0 for r in ok) and all(r.verified for r in ok)
                and busiest <= args.limit)
        met = "(context)" if context else "yes" if good else "**no**"
        cells = [
            name, f"{rtt:g} ms ({args.rtt_side})" if rtt else "0 ms", _starts(med),
            str(len(ok)) + ("" if len(ok) == len(runs) else f" (+{len(runs) - len(ok)} failed)"),
            f"{med.requests:,}", f"{med.span:.3f}", f"{med.rate:,.0f} / {bestr.rate:,.0f}", share, bound, steady,
            f"{busiest:,} / {max(servers):,}" if servers else f"{busiest:,} / —",
            " / ".join(str(r.rate_limited) for r in ok), " / ".join(str(r.retries) for r in ok),
            " / ".join("?" if r.others_cpu is None else f"{r.others_cpu:.2f}" for r in ok),
            " / ".join(f"{r.load1:.2f}" for r in ok),
            "yes" if all(r.verified for r in ok) else "**no**", target, met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail(r: Result, args) -> str:
    head = f"- {r.variant}, RTT {r.rtt_ms:g} ms, #{r.repeat + 1}"
    if r.error and not r.span:
        return f"{head}: error: {r.error} (load {r.load1:.2f})"
    gc2 = r.gc.get("2", [])
    gc_all = [p for ps in r.gc.values() for p in ps]
    gc_txt = (f"GC {len(gc_all)} collections, {sum(gc_all) * 1000:.0f} ms total, longest "
              f"{max(gc_all, default=0) * 1000:.1f} ms ({len(gc2)} full, longest {max(gc2, default=0) * 1000:.1f} ms)"
              if r.gc else "GC not watched")
    lat = (f"grant→response p50 {r.latency_ms['p50']:.1f} ms / p99 {r.latency_ms['p99']:.1f} ms / "
           f"max {r.latency_ms['max']:.1f} ms" if r.latency_ms else "latency n/a")
    g2a = r.grant_to_arrival_ms
    g2a_txt = (f"grant→arrival at the sandbox p50 {g2a['p50']:.1f} ms / p99 {g2a['p99']:.1f} ms / max {g2a['max']:.1f} ms"
               if g2a else "grant→arrival n/a")
    steady = ("—" if r.variant == "unpaced" else "never all sending" if r.steady is None
              else f"{r.steady:.1%} over {r.steady_seconds:.2f} s")
    gap = r.gap_ms
    gap_txt = (f"gap between a limiter's consecutive grants mean {gap['mean']:.2f} ms / p50 {gap['p50']:.2f} / "
               f"p99 {gap['p99']:.2f} / max {gap['max']:.1f} ms (interval {r.interval_ms:.2f} ms)" if gap else "gaps n/a")
    return (f"{head}: starts {_starts(r)} s after GO; {r.requests:,} requests ({r.accepted:,} accepted, "
            f"{r.rate_limited} × 429 at the sandbox, {r.client_429} seen by the client, {r.retries} retries) in "
            f"{r.span:.3f} s (last send at {r.send_span:.3f} s) = {r.rate:,.0f} req/s = {r.share:.1%} of the limit "
            f"(pacing bound {r.bound:.1%}); steady state (all sending) {steady}; fill of complete windows "
            f"{'—' if r.fill is None else f'{r.fill:.1%}'}; sends per {args.window:g}-s window from the first: "
            f"{', '.join(str(n) for n in r.timeline)}; busiest window: client {r.busiest:,}, sandbox arrivals "
            f"{'—' if r.busiest_server is None else f'{r.busiest_server:,}'}; GO→first send {r.go_to_first * 1000:.0f} ms; "
            f"per chunk first→last send {', '.join(f'{a:.2f}→{b:.2f}' for a, b in r.per_worker)} s; "
            f"most requests in flight per process {', '.join(str(n) for n in r.max_in_flight)}; {gap_txt}; {lat}; "
            f"{g2a_txt}; "
            f"sandbox CPU {r.sandbox_cpu:.2f} s ({r.sandbox_cpu / r.span:.0%} of a core, "
            f"{r.sandbox_cpu / max(1, r.requests) * 1000:.2f} ms/request); client CPU {r.client_cpu:.2f} s from GO, "
            f"{r.client_cpu_span:.2f} s from each process's first send ({r.client_cpu_span / r.span:.0%} of a core, "
            f"{r.client_cpu_span / max(1, r.requests) * 1000:.2f} ms/request); in track() {r.track_seconds:.2f} s, "
            f"waiting on the limiter {r.waited:.2f} s (summed over threads); limiter holds set by "
            f"X-RateLimit-Remaining: 0 {_hold(r, 'observe')}, by a 429's Retry-After {_hold(r, 'pause')}; "
            f"{r.checkpoints} checkpoints {r.checkpoint_seconds * 1000:.0f} ms; {r.connections} TCP connection(s); "
            f"sandbox {gc_txt}; profiles {r.profiles:,} {'OK' if r.verified else 'MISMATCH'}; other processes "
            f"{'?' if r.others_cpu is None else f'{r.others_cpu:.2f}'} cores; load {r.load1:.2f}"
            + (f"; errors: {r.error}" if r.error else ""))


def _hold(r: Result, kind: str) -> str:
    n, seconds = r.holds.get(kind, (0, 0.0))
    return f"{n} × (total {seconds:.2f} s)"


def machine() -> str:
    import requests
    import urllib3

    from bench.measure import machine as machine_facts

    return f"{machine_facts()}, requests {requests.__version__}, urllib3 {urllib3.__version__}"


def _load(avg: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in avg)
