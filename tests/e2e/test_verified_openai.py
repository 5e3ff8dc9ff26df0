"""The official `openai` client, with only its base URL changed, gets the network's agreed
answer from real daemons: three honest `rakis node start` processes and one
`--fault garbage` node (tiny random Llama, real MiniLM), shared by every test here.

Covers: non-streaming and streaming answers equal at temperature 0; the certificate from
`certificate_url` accepted by `rakis verify`'s checker; a multi-turn conversation with a
system prompt that every node templates the same way (same answer everywhere, re-check
passed); the `rakis` override field; each failure mapping (no cluster, not enough
commits, unknown model) with its status and code; a caller that hangs up mid-stream
leaves the request to finish on every node. Requests use 30 s commit windows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_helpers import Daemon, DaemonOptions, start_network, stop_all

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.timeout(900)

TINY = "tiny-llama"
# 30 s to commit: the garbage node commits at once, so an honest node that misses the
# window on a busy machine leaves 2 honest commits + garbage, and quorum 3 fails (seen
# with 10 s and, once in the full suite, with 20 s).
FAST = {"commit_window_s": 30, "max_time_s": 120, "sec_distance": 0.15}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[dict[str, Daemon]]:
    options = DaemonOptions(
        model=TINY, model_dir=tiny_llama_dir, reveal_window_s=20, ready_timeout_s=240, final_timeout_s=120
    )
    root = tmp_path_factory.mktemp("verified-net")
    daemons = start_network(root, options)
    a = daemons[0]
    garbage = Daemon(root / "g", options, bootstrap=[d.addr for d in daemons], fault="garbage")
    daemons.append(garbage)
    try:
        garbage.start().wait_ready()
        for d in daemons:
            d.wait_for(lambda d=d: d.peer_count() >= 3 or d.peer_count() >= 1 and d is not a, 60, "peers")
        a.wait_for(lambda: a.peer_count() >= 3, 60, "a sees 3 peers")
        # a's peers have announced their models (peer_info), so the 503 check can trust them.
        a.wait_for(
            lambda: all(p.get("models") for p in a.get("/v1/peers").json()["peers"]), 60, "peer models known"
        )
        yield {"a": a, "b": daemons[1], "c": daemons[2], "g": garbage}
    finally:
        stop_all(daemons)


def client_of(d: Daemon) -> Any:
    return openai.OpenAI(base_url=f"{d.url}/verified/v1", api_key="unused", timeout=180, max_retries=0)


# The tiny model's random text is re-checked by re-tokenizing it, which some outputs do not
# survive (engine.recheck's known risk, "too_long"); this prompt's 12 tokens do.
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_openai_client_gets_the_agreed_answer_streaming_and_not(net: dict[str, Daemon]) -> None:
    from node.certificates import verify_certificate_data

    a = net["a"]
    client = client_of(a)
    reply = client.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        temperature=0,
        max_tokens=12,
        extra_body={"rakis": {"quorum": 3, **FAST}},
    )
    rakis = reply.model_extra["rakis"]
    view = a.request(reply.id)
    assert view["state"] == "succeeded" and rakis["state"] == "succeeded"
    assert reply.choices[0].message.content == view["answer"]
    assert reply.model == TINY and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.total_tokens > 0
    honest = {net[n].node_id for n in "abc"}
    assert {m["node_id"] for m in rakis["members"]} == honest
    assert rakis["recheck"] in ("checked", "partial")

    stream = client.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        temperature=0,
        max_tokens=12,
        stream=True,
        extra_body={"rakis": {"quorum": 3, **FAST}},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # temperature 0: the same answer
    assert chunks[0].id != reply.id and a.request(chunks[0].id)["state"] == "succeeded"

    cert = httpx.get(rakis["certificate_url"], timeout=30)
    assert cert.status_code == 200
    ok, problems, facts = verify_certificate_data(cert.json())
    assert ok, problems
    assert facts["answer"] == reply.choices[0].message.content


def test_multi_turn_with_a_system_prompt_is_templated_alike_on_every_node(net: dict[str, Daemon]) -> None:
    a = net["a"]
    messages = [
        {"role": "system", "content": "You answer with one word."},
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
        # (See MESSAGES: this conversation's output survives the re-check's re-tokenization.)
        {"role": "user", "content": "And the grass?"},
    ]
    reply = client_of(a).chat.completions.create(
        model=TINY,
        messages=messages,
        temperature=0,
        max_tokens=12,
        stop=["\n\n"],
        extra_body={"rakis": {"quorum": 3, "seed": 11, **FAST}},
    )
    final = {n: net[n].wait_final(reply.id) for n in "abc"}
    # Every honest node generated the same text from the same templated conversation,
    # and each re-checked the others' outputs as passed.
    outputs = {r["node_id"]: r["output"] for r in final["a"]["reveals"]}
    assert {outputs[net[n].node_id] for n in "abc"} == {reply.choices[0].message.content}
    for n in "abc":
        verdicts = {r["node_id"]: (r["recheck"] or {}).get("status") for r in final[n]["reveals"]}
        assert all(verdicts[net[m].node_id] == "passed" for m in "abc"), (n, verdicts)
    assert final["a"]["security_frame"]["quorum"] == 3
    assert final["a"]["prompt"] == "And the grass?"


def test_failures_are_openai_errors_with_status_and_code(net: dict[str, Daemon]) -> None:
    a = net["a"]
    client = client_of(a)
    # Four nodes commit, the garbage one cannot join the cluster: no cluster of 4.
    with pytest.raises(openai.APIStatusError) as no_cluster:
        client.chat.completions.create(
            model=TINY,
            messages=MESSAGES,
            temperature=0,
            max_tokens=12,
            extra_body={"rakis": {"quorum": 4, "sec_percentage": 1.0, **FAST}},
        )
    err = no_cluster.value
    assert err.status_code == 502
    rid = err.response.headers["x-rakis-request-id"]
    view = a.request(rid)
    assert view["state"] == "failed" and err.body["code"] == view["reason"]
    assert err.body["request_id"] == rid
    # More than the network holds: not enough commits.
    with pytest.raises(openai.APIStatusError) as too_few:
        client.chat.completions.create(
            model=TINY, messages=MESSAGES, max_tokens=4, extra_body={"rakis": {"quorum": 6, **FAST}}
        )
    assert too_few.value.status_code == 502 and too_few.value.body["code"] == "not_enough_commits"
    # No node serves it.
    with pytest.raises(openai.APIStatusError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert unknown.value.status_code == 503 and unknown.value.body["code"] == "model_not_served"
    assert "no-such-model" in unknown.value.body["message"]
    # A bad override names its field.
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TINY, messages=MESSAGES, extra_body={"rakis": {"quorum": 0}})
    assert bad.value.body["param"] == "rakis.quorum"


def test_a_caller_that_hangs_up_mid_stream_leaves_the_request_to_finish(net: dict[str, Daemon]) -> None:
    a = net["a"]
    body = {
        "model": TINY,
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0,  # as every request here that must agree (see MESSAGES)
        "stream": True,
        "rakis": {"quorum": 3, **FAST},
    }
    with httpx.stream("POST", f"{a.url}/verified/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        rid = r.headers["x-rakis-request-id"]
        for line in r.iter_lines():
            if line.startswith(": stage="):
                break  # hang up while consensus runs
    for n in "abc":
        net[n].wait_succeeded(rid)
    cert = httpx.get(f"{a.url}/v1/requests/{rid}/certificate", timeout=30)
    assert cert.status_code == 200 and cert.json()["request_id"] == rid


def test_ask_the_network_box_in_the_dashboard(net: dict[str, Daemon], tmp_path: Path) -> None:
    """The dashboard's "ask the network" box on the testnet: stages advance, the answer,
    the winning nodes' re-check verdicts and the certificate link appear; screenshot saved."""
    from tests.node.dashboard.browser import browser_page

    a = net["a"]
    with browser_page() as page:
        page.goto(a.url + "/")
        page.wait_for_selector(f'#ask-model option[value="{TINY}"]', state="attached", timeout=30_000)
        page.fill("#ask-prompt", "Name a colour.")
        page.fill("#ask-quorum", "3")
        page.fill("#ask-max-tokens", "12")
        page.click("#ask-submit")
        page.wait_for_selector('#ask-status[data-state="running"]', timeout=30_000)
        seen_stages = {page.text_content("#ask-stage")}
        while page.get_attribute("#ask-status", "data-state") == "running":
            seen_stages.add(page.text_content("#ask-stage"))
            page.wait_for_timeout(200)
        assert page.get_attribute("#ask-status", "data-state") == "succeeded", (
            f"{page.text_content('#ask-error')}\n{a.recent_failures(5)}"
        )
        assert seen_stages & {"queued", "inferring", "committed", "revealing", "verifying"}
        answer = page.text_content("#ask-answer")
        assert answer
        rows = page.locator("tr.ask-reveal")
        assert rows.count() >= 3
        assert page.locator("tr.ask-reveal", has_text="passed").count() >= 3
        href = page.get_attribute("#ask-certificate", "href")
        assert href and href.endswith("/certificate")
        assert httpx.get(href, timeout=30).json()["result"]["output"] == answer
        page.screenshot(path=str(tmp_path / "ask-the-network.png"), full_page=True)
        shots = Path(os.environ.get("RAKIS_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "ask-the-network.png"), full_page=True)
        assert page.console_errors == []


def test_bench_e2e_openai_sends_the_same_load_through_the_verified_path(net: dict[str, Daemon]) -> None:
    """`scripts/bench_e2e.py --openai` in a small configuration on this testnet: the raw and
    the verified load both succeed in full, and the overhead is reported."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_e2e.py"
    cmd = [sys.executable, str(script), "--tiny", "--requests", "3", "--max-tokens", "12"]
    cmd += ["--max-time", "80", "--sec-distance", "0.15", "--openai", "--json"]  # 20 s commit window
    for n in "abc":
        cmd += ["--url", net[n].url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["succeeded"] == 3 and out["openai"]["succeeded"] == 3, (
        json.dumps(out) + "\n" + "\n".join(f"{n}: {net[n].recent_failures(12)}" for n in "abc")
    )
    assert out["overhead_s"]["p50"] is not None
    assert "overhead against the raw request API" in proc.stdout
