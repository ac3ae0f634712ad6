"""The production cases' results as markdown tables (bench/cases.py writes them beside the JSON)."""

from __future__ import annotations

import os
from typing import Any


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1e3 * v:.1f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _p(stats: dict[str, Any], key: str = "e2e_s") -> str:
    s = stats[key]
    return f"{_ms(s['p50'])} / {_ms(s['p99'])}"


def _lookup(lookup: dict[str, Any] | None) -> str:
    if not lookup or not lookup.get("lookups"):
        return "-"
    bound = lookup["p99_at_most_s"]
    return f"{lookup['share_within_2ms']:.1%} (p99 {'> 128' if bound == float('inf') else f'≤ {_ms(bound)}'})"


def search_table(search: list[dict[str, Any]]) -> str:
    rows = ["| stack | protocol | idle hit p50 / p99 ms | mix QPS | mix hits | hit p50 / p99 ms | miss p50 / p99 ms "
            "| mix p99 ms | hits-only QPS (per gateway) | gateway CPU ms per hit | hits per gateway CPU s "
            "| lookups ≤ 2 ms: idle / mix | failed |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stack in search:
        for run in stack["protocols"]:
            m, h, i = run["mix"], run["hits_only"], run["idle_hits"]
            failed = m["failed"] + h["failed"] + i["failed"] + run["warm_up_failed"]
            rows.append(
                f"| {stack['name']} | {run['protocol']} | {_p(i['hit'])} | {m['qps']:.0f} | {m['hit_share']:.0%} | "
                f"{_p(m['hit'])} | {_p(m['miss'])} | {_ms(m['all']['e2e_s']['p99'])} | {h['hit_qps']:.0f} "
                f"({h['hit_qps_per_gateway']:.0f}) | {h['gateway_cpu_ms_per_hit']:.2f} | "
                f"{h['hits_per_gateway_cpu_s']:.0f} | {_lookup(i.get('lookup'))} / {_lookup(m.get('lookup'))} | {failed} |")
    return "\n".join(rows)


def paced_table(search: list[dict[str, Any]]) -> str:
    rows = ["| stack | protocol | offered hits/s | achieved hits/s | hit p50 / p90 / p99 ms | failed |",
            "|---|---|---|---|---|---|"]
    for stack in search:
        for run in stack["protocols"]:
            for p in run.get("paced_hits", []):
                e2e = p["hit"]["e2e_s"]
                rows.append(f"| {stack['name']} | {run['protocol']} | {p['offered_qps']:.0f} | {p['achieved_qps']:.0f} "
                            f"| {_ms(e2e['p50'])} / {_ms(e2e['p90'])} / {_ms(e2e['p99'])} | {p['failed']} |")
    return "\n".join(rows)


def translate_table(translate: dict[str, Any]) -> str:
    rows = ["| sessions | segments | first chunk p50 / p99 ms | segment p50 / p99 ms | slowest session chars/s "
            "| session chars/s p50 | prefix-cached share of later prompts | later segment p50: uncached / its own tokens "
            "| within limits |", "|---|---|---|---|---|---|---|---|---|"]
    for s in translate.get("steps", []):
        rate, uncached = s["session_chars_per_s"], s["uncached_tokens_per_later_segment"]
        rows.append(
            f"| {s['sessions']} | {s['segments']} ({s['unanswered_segments']} unanswered, {s['failed_sessions']} "
            f"sessions failed) | {_p(s, 'first_chunk_s')} | {_p(s, 'segment_s')} | {_num(rate['min'], '.0f')} | "
            f"{_num(rate['p50'], '.0f')} | {_num(s['prefix_cached_share'], '.1%')} | {_num(uncached['p50'], '.0f')} / "
            f"{_num(s['new_segment_tokens']['p50'], '.0f')} "
            f"| {'yes' if s['within_limits'] else 'no'} |")
    return "\n".join(rows)


def embed_table(embed: list[dict[str, Any]]) -> str:
    rows = ["| batch | cold p50 / p99 ms | protocol | cached, one at a time: p50 / p99 ms | concurrent: p50 / p99 ms "
            "| concurrent requests/s | uncached vectors | gateway lookups ≤ 2 ms: one at a time / concurrent |",
            "|---|---|---|---|---|---|---|---|"]
    for r in embed:
        for protocol in ("http", "grpc"):
            c = r[protocol]
            rows.append(f"| {r['batch']} | {_ms(r['cold_s']['p50'])} / {_ms(r['cold_s']['p99'])} | {protocol} | "
                        f"{_p(c, 'idle_s')} | {_p(c, 'cached_s')} | {c['requests_per_s']:.0f} | "
                        f"{c['uncached_vectors']} | {_lookup(c['idle_lookup'])} / {_lookup(c['lookup'])} |")
    return "\n".join(rows)


def markdown(results: dict[str, Any]) -> str:
    limits = results["limits"]
    parts = [f"Tree at git commit `{results['git_commit']}`.\n"]
    if results["translate"]:
        parts += ["## Live translation (gRPC Translate)\n",
                  f"Stack: `{results['translate']['stack']}`. A step passes when first-chunk p99 ≤ "
                  f"{_ms(limits['first_chunk_s'])} ms and every session streams ≥ {limits['min_chars_per_s']:.0f} "
                  "chars/s (completion tokens × 4 chars; see bench/cases_translate.py).\n",
                  translate_table(results["translate"]), ""]
    if results.get("mixed"):
        m = results["mixed"][0]
        parts += ["## Translation beside long prefills\n",
                  f"{m['sessions']} sessions while another process keeps {m['background_concurrency']} prompts of "
                  f"{m['background_prompt_tokens']} tokens prefilling, one stack per step token budget.\n",
                  "| step token budget | long prompts done | " + translate_table({"steps": []}).split("\n")[0][2:],
                  "|---|---" + translate_table({"steps": []}).split("\n")[1]]
        for step in results["mixed"]:
            row = translate_table({"steps": [step]}).split("\n")[2]
            parts.append(f"| {step['max_num_batched_tokens']} | {step['background_requests_done']} {row}")
        parts.append("")
    if results["search"]:
        parts += ["## Search QA from the result cache (Redis)\n",
                  "Latencies are whole answers (send to last chunk); idle hits are sent one at a time. "
                  "Each gateway keeps a copy of an answer it read from Redis for --result-cache-local-ttl-s (1 s "
                  "unless the stack's flags say otherwise). 'Lookups ≤ 2 ms' is the gateway's own histogram of its "
                  "result-cache lookups (keys, local copy or Redis GET, decoding) while hits go one at a time and during the mix, where it includes waiting for the busy "
                  "event loop (one gateway only: with several, /metrics answers from any one of them).\n",
                  search_table(results["search"]), ""]
        if any(run.get("paced_hits") for stack in results["search"] for run in stack["protocols"]):
            parts += ["Hits alone at offered rates: Poisson arrivals (open loop), whole-answer latency of each hit. "
                      "gRPC is offered less: the benchmark's Python gRPC client reaches its own ceiling (the closed-loop "
                      "hits row above) well before the gateways do.\n",
                      paced_table(results["search"]), ""]
    if results["embed"]:
        parts += ["## Cached embeddings (MiniLM, embedding cache in Redis)\n", embed_table(results["embed"]), ""]
    loads = [("translation", results["translate"].get("load_average_1m_at_end"))] if results["translate"] else []
    loads += [(s["name"], s["load_average_1m_at_end"]) for s in results["search"]]
    if loads:
        parts.append(f"Load average (1 min) at the end of each part, on {os.cpu_count()} cores (other processes' "
                     "share of the cores shows in the p99 figures): "
                     + ", ".join(f"{name} {load:.1f}" for name, load in loads) + "\n")
    if results["skipped"]:
        parts.append("Skipped (past the time budget): " + ", ".join(results["skipped"]))
    return "\n".join(parts)
