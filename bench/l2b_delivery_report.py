"""The report of bench/run_l2b_delivery.py: the table (median and best run per variant) and every run."""

from __future__ import annotations

from bench.l2b_delivery_runs import TARGET_SHARE, Result

VARIANT_NAMES = {
    "processes": "{w} processes, own limiter each ({b}/{win:g}s) — the DAG's shape",
    "threads": "1 process, {w} threads, one shared limiter ({l}/{win:g}s)",
    "processes-gc-tuned": "same as the first row, sandbox GC tuned (context)",
    "unpaced": "{w} processes, no limit (machine ceiling, context)",
}


CONTEXT_VARIANTS = {"processes-gc-tuned", "unpaced"}


def _median_run(runs: list[Result]) -> Result:
    ok = sorted((r for r in runs if not r.error and r.span), key=lambda r: r.rate)
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def table(results: dict[str, list[Result]], args) -> str:
    head = ["variant", "runs", "requests", "span first→last (s)", "achieved req/s (median / best)",
            "share of limit (median / best)", "window fill (median)", "busiest window", "429s (sandbox)",
            "retries", "limiter holds, median run: remaining 0 / 429", "sandbox full GCs, median run",
            "profiles = changes", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for variant, runs in results.items():
        name = VARIANT_NAMES[variant].format(w=args.workers, b=max(1, args.limit // args.workers), l=args.limit,
                                             win=args.window)
        ok = [r for r in runs if not r.error and r.span]
        if not ok:
            err = next((r.error for r in runs if r.error), "no successful run")
            lines.append("| " + " | ".join([name, str(len(runs)), *["—"] * (len(head) - 3), f"error: {err[:100]}"])
                         + " |")
            continue
        med = _median_run(ok)
        bestr = max(ok, key=lambda r: r.rate)
        unpaced = variant == "unpaced"
        context = variant in CONTEXT_VARIANTS
        target = "(context)" if context else f"share ≥ {TARGET_SHARE:.0%}, 0 × 429"
        if unpaced:
            share = fill = "—"
        else:
            share = f"{med.share:.1%} / {bestr.share:.1%}"
            fill = "—" if med.fill is None else f"{med.fill:.1%} ({med.windows} × {args.window:g}s)"
        good = med.share >= TARGET_SHARE and all(r.rate_limited == 0 for r in ok) and all(r.verified for r in ok)
        met = "(context)" if context else "yes" if good else "**no**"
        if not context and med.windows == 0:
            met = "n/a (shorter than one window)"
        cells = [
            name, str(len(ok)) + ("" if len(ok) == len(runs) else f" (+{len(runs) - len(ok)} failed)"),
            f"{med.requests:,}", f"{med.span:.3f}", f"{med.rate:,.0f} / {bestr.rate:,.0f}", share, fill,
            f"{max(r.busiest for r in ok):,}", " / ".join(str(r.rate_limited) for r in ok),
            " / ".join(str(r.retries) for r in ok),
            f"{_hold(med, 'observe')} / {_hold(med, 'pause')}", _full_gcs(med),
            "yes" if all(r.verified for r in ok) else "**no**", target, met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail(r: Result, args) -> str:
    if r.error and not r.span:
        return f"- {r.variant} #{r.repeat + 1}: error: {r.error} (load {r.load1:.2f})"
    gc2 = r.gc.get("2", [])
    gc_all = [p for ps in r.gc.values() for p in ps]
    gc_txt = (f"GC {len(gc_all)} collections, {sum(gc_all) * 1000:.0f} ms total, longest "
              f"{max(gc_all, default=0) * 1000:.1f} ms ({len(gc2)} full, longest {max(gc2, default=0) * 1000:.1f} ms)"
              if r.gc else "GC not watched")
    lat = (f"latency p50 {r.latency_ms['p50']:.2f} ms / p99 {r.latency_ms['p99']:.2f} ms / max {r.latency_ms['max']:.1f} ms"
           if r.latency_ms else "latency n/a (threads)")
    return (f"- {r.variant} #{r.repeat + 1}: {r.requests:,} requests ({r.accepted:,} accepted, {r.rate_limited} × 429 at the sandbox, "
            f"{r.client_429} seen by the client, {r.retries} retries) in {r.span:.3f} s (last send at {r.send_span:.3f} s) = {r.rate:,.0f} req/s; "
            f"fill {'—' if r.fill is None else f'{r.fill:.1%}'}; busiest window {r.busiest:,}; GO→first send "
            f"{r.go_to_first * 1000:.0f} ms; per process first send→last response "
            f"{', '.join(f'{a:.2f}→{b:.2f}' for a, b in r.per_worker)} s; sandbox CPU {r.sandbox_cpu:.2f} s ({r.sandbox_cpu / r.span:.0%} of a core); "
            f"client CPU {r.client_cpu:.2f} s from GO, {r.client_cpu_span:.2f} s from the first send "
            f"({r.client_cpu_span / r.span:.0%} of a core, {r.client_cpu_span / max(1, r.requests) * 1000:.2f} ms/request); "
            f"sandbox {r.sandbox_cpu / max(1, r.requests) * 1000:.2f} ms/request; in track() {r.track_seconds:.2f} s "
            f"of which waiting on the limiter {r.waited:.2f} s (summed over workers); limiter holds set by "
            f"X-RateLimit-Remaining: 0 {_hold(r, 'observe')}, by a 429's Retry-After {_hold(r, 'pause')}; {r.checkpoints} checkpoints "
            f"{r.checkpoint_seconds * 1000:.0f} ms; {r.connections} TCP connection(s); {lat}; sandbox {gc_txt}; profiles {r.profiles:,} "
            f"{'OK' if r.verified else 'MISMATCH'}; load {r.load1:.2f}" + (f"; errors: {r.error}" if r.error else ""))


def _hold(r: Result, kind: str) -> str:
    n, seconds = r.holds.get(kind, (0, 0.0))
    return f"{n} × (total {seconds:.2f} s)"


def _full_gcs(r: Result) -> str:
    if not r.gc:
        return "not watched"
    full = r.gc.get("2", [])
    return f"{len(full)} ({sum(full):.2f} s, longest {max(full, default=0) * 1000:.0f} ms)"


def machine() -> str:
    import requests
    import urllib3

    from bench.measure import machine as machine_facts

    return f"{machine_facts()}, requests {requests.__version__}, urllib3 {urllib3.__version__}"


def _load(avg: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in avg)
