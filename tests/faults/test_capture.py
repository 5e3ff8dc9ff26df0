"""Proof of inference on real daemons: a Sybil attacker cannot capture a request, nor
make an honest one fail, whatever it claims to have computed.

Three honest daemons (quorum 3, temperature 0) and one attacker host holding three
identities of its own. The attacker commits the instant the request exists, asks for
reveals naming only its own commits, and reveals one identical off-topic answer. Before
proof of inference its answer won on every node; now no honest node reports it, and no
attacker identity is ever a member.
"""

from __future__ import annotations

import pytest

from engine.model_files import weights_hash
from node import wire
from node.identity import Identity
from tests.daemon_helpers import Daemon

from .attacker import OFF_TOPIC, Sybil, copy_after_reveal, model_output, race

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _final_views(daemons: list[Daemon], rid: str) -> list[dict]:
    return [d.wait_final(rid, 150) for d in daemons]


def _explain(views: list[dict]) -> str:
    """Per view: state, reason, and each reveal's node, status and re-check verdict."""
    lines = []
    for v in views:
        lines.append(f"{v['state']} {v['reason']} commits={len(v['commits'])} recheck={v.get('recheck')}")
        for r in v["reveals"]:
            verdict = r.get("recheck") or {}
            lines.append(f"  {r['node_id'][:8]} {r['status']} {r['reason']} {verdict.get('status')} {verdict.get('reason')}")
    return "\n".join(lines)


def _frame(prompt: str, temperature: float = 0.0) -> bytes:
    from node.client import build_request, sign_request
    from tests.daemon_helpers import EMBEDDING

    body = build_request(
        prompt,
        models=["tiny-llama"],
        quorum=3,
        max_time_s=120,
        sec_distance=0.15,
        temperature=temperature,
        max_tokens=16,
        embedding_model=EMBEDDING,
        commit_window_s=10,
    )
    return sign_request(body, Identity.generate())


def _attack(trio_net, frames_for, prompt: str, temperature: float = 0.0) -> tuple[str, list[dict]]:
    from tests.node.p2p.conftest import run_trio

    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    frame = _frame(prompt, temperature)

    async def main() -> str:
        return await race(connect_to=a.addr, submit=lambda: b.submit(frame), frames_for=frames_for)

    rid = run_trio(main, timeout_s=120)
    return rid, _final_views([a, b, c], rid)


def _assert_honest_outcome(trio_net, views: list[dict], sybil: Sybil) -> None:
    honest = {trio_net[n].node_id for n in ("a", "b", "c")}
    attackers = {i.node_id for i in sybil.identities}
    answers = set()
    for v in views:
        members = {m["node_id"] for m in v["members"]}
        assert not members & attackers, ("an attacker identity is a member", v["members"])
        assert v["answer"] != OFF_TOPIC, v
        if v["state"] == "succeeded":
            assert members <= honest
            answers.add(v["answer"])
        else:  # failing is allowed only with a reason that names the failed re-check
            assert v["reason"] and "recheck" in v["reason"], v
    assert len(answers) <= 1, answers


def test_fast_sybil_quorum_cannot_capture_the_request(trio_net, tiny_llama_dir):
    sybil = Sybil(3, model_hash=weights_hash(tiny_llama_dir))

    def frames_for(rid: str) -> list[bytes]:
        claims = sybil.claims(rid, [OFF_TOPIC])
        return [*sybil.commit_frames(rid, claims), sybil.reveal_request_frame(rid, claims), *sybil.reveal_frames(rid, claims)]

    _, views = _attack(trio_net, frames_for, "Name a planet.")
    _assert_honest_outcome(trio_net, views, sybil)
    assert all(v["state"] == "succeeded" for v in views), _explain(views)  # the honest answer wins


def test_sybil_reveals_that_do_not_open_their_commits_cannot_block_the_request(trio_net, tiny_llama_dir):
    sybil = Sybil(3, model_hash=weights_hash(tiny_llama_dir))

    def frames_for(rid: str) -> list[bytes]:
        claims = sybil.claims(rid, [OFF_TOPIC])
        return [
            *sybil.commit_frames(rid, claims),
            sybil.reveal_request_frame(rid, claims),
            *sybil.reveal_frames(rid, claims, mismatched=True),
        ]

    _, views = _attack(trio_net, frames_for, "Name a river.")
    _assert_honest_outcome(trio_net, views, sybil)
    assert all(v["state"] == "succeeded" for v in views), _explain(views)


def test_sybil_commits_that_are_never_revealed_cannot_block_the_request(trio_net, tiny_llama_dir):
    sybil = Sybil(3, model_hash=weights_hash(tiny_llama_dir))

    def frames_for(rid: str) -> list[bytes]:
        claims = sybil.claims(rid, [OFF_TOPIC])
        return [*sybil.commit_frames(rid, claims), sybil.reveal_request_frame(rid, claims)]

    _, views = _attack(trio_net, frames_for, "Name a mountain.")
    _assert_honest_outcome(trio_net, views, sybil)
    assert all(v["state"] == "succeeded" for v in views), _explain(views)


def _body(rid: str, prompt: str, temperature: float = 0.0) -> wire.InferenceRequest:
    """The request body as the attacker reads it off gossip (here: rebuilt from the prompt)."""
    return wire.InferenceRequest(
        prompt=prompt,
        accepted_models=["tiny-llama"],
        temperature=temperature,
        max_tokens=16,
        security_frame=wire.SecurityFrame(
            quorum=3, max_time_ms=120_000, sec_distance=0.15, sec_percentage=1.0, embedding_model="all-minilm-l6-v2"
        ),
    )


def _claims_attack(trio_net, sybil: Sybil, prompt: str, outputs_for, temperature: float = 0.0):
    def frames_for(rid: str) -> list[bytes]:
        claims = sybil.claims(rid, outputs_for(rid))
        return [*sybil.commit_frames(rid, claims), *sybil.reveal_frames(rid, claims)]

    return _attack(trio_net, frames_for, prompt, temperature)


def test_copier_cannot_claim_an_honest_output_after_the_reveal(trio_net, tiny_llama_dir):
    from tests.node.p2p.conftest import run_trio

    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    copier = Identity.generate()
    frame = _frame("Name a colour.")

    async def main():
        return await copy_after_reveal(
            connect_to=a.addr,
            submit=lambda: b.submit(frame),
            copier=copier,
            model="tiny-llama",
            model_hash=weights_hash(tiny_llama_dir),
        )

    rid, copied = run_trio(main, timeout_s=150)
    assert copied, "no honest reveal was seen to copy"
    views = _final_views([a, b, c], rid)
    for v in views:
        assert v["state"] == "succeeded", v
        assert copier.node_id not in {m["node_id"] for m in v["members"]}, v["members"]
        assert copier.node_id not in {c["node_id"] for c in v["commits"]}  # commits had closed


def test_answer_grinding_with_paraphrases_of_the_honest_output_is_rejected(trio_net, tiny_llama_dir):
    prompt = "Name a fruit."
    sybil = Sybil(3, model_hash=weights_hash(tiny_llama_dir))

    def variants(rid: str) -> list[str]:
        honest = model_output(tiny_llama_dir, rid, _body(rid, prompt))
        return [honest + " ", honest.rstrip(".") + "!", "Well, " + honest]

    _, views = _claims_attack(trio_net, sybil, prompt, variants)
    _assert_honest_outcome(trio_net, views, sybil)
    for v in views:
        assert v["state"] == "succeeded", v
        failed = {r["node_id"] for r in v["reveals"] if (r.get("recheck") or {}).get("status") == "failed"}
        assert failed == {i.node_id for i in sybil.identities}, v["reveals"]


def test_another_models_output_under_the_accepted_name_is_rejected(trio_net, tiny_llama_dir, tmp_path):
    from tests.tiny_models import make_tiny_llama_dir

    other_model = make_tiny_llama_dir(tmp_path / "other", seed=11)  # same shape, other weights
    prompt = "Name a bird."
    sybil = Sybil(3, model_hash=weights_hash(tiny_llama_dir))
    _, views = _claims_attack(
        trio_net, sybil, prompt, lambda rid: [model_output(other_model, rid, _body(rid, prompt))]
    )
    _assert_honest_outcome(trio_net, views, sybil)
    assert all(v["state"] == "succeeded" for v in views), _explain(views)


def test_an_output_sampled_with_another_seed_is_rejected(trio_net, tiny_llama_dir):
    prompt = "Name a tree."
    sybil = Sybil(3, model_hash=weights_hash(tiny_llama_dir))
    _, views = _claims_attack(
        trio_net,
        sybil,
        prompt,
        lambda rid: [model_output(tiny_llama_dir, rid, _body(rid, prompt, 0.7), seed=12345)],
        temperature=0.7,
    )
    _assert_honest_outcome(trio_net, views, sybil)
