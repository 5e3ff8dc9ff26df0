"""Adversaries against the real MiniLM embedding model on the fixed SmolLM2 corpus.

Quorum 5, sec_percentage 0.6 (3 needed), the default sec_distance. Honest nodes answer
greedily (identical outputs) or at temperature 0.7 (the corpus samples).
"""

from __future__ import annotations

import itertools

import pytest

from consensus import (
    DEFAULT_SEC_DISTANCE,
    QuorumConfig,
    SecurityParams,
    binary_embedding,
    inference_id_for,
    make_commit,
    verify_reveal,
)
from tests.consensus.sim import REQUEST_ID, Node, Sim, pubkey

PARAMS = SecurityParams(quorum=5, max_time_ms=30_000, sec_distance=DEFAULT_SEC_DISTANCE, sec_percentage=0.6)
CONFIG = QuorumConfig(
    reveal_request_grace_ms=200, commit_grace_ms=300, reveal_window_ms=3_000, consensus_window_ms=3_000
)
KINDS = ("random_text", "off_topic", "truncated")


def test_honest_outputs_never_rejected(corpus, corpus_embed, embed_texts) -> None:
    """Commit from a batch embedding, verify from a single one (padding changes floats)."""
    honest = [t for it in corpus["items"] for t in (it["greedy"], *it["sampled_t07"])]
    batch = [corpus_embed(t) for t in honest]  # embedded in one padded batch
    for k, text in enumerate(honest):
        b = binary_embedding(batch[k])
        iid = inference_id_for(REQUEST_ID, pubkey(k))
        commit = make_commit(b, pubkey(k), iid)
        own = embed_texts([text])[0] if k % 9 == 0 else batch[k]  # each greedy alone
        rej = verify_reveal(
            request_id=REQUEST_ID,
            node_pubkey=pubkey(k),
            inference_id=iid,
            commit=commit,
            revealed_b=b,
            own_embedding=own,
        )
        assert rej is None, (text[:40], rej)


def _run(nodes: list[Node], embed, seed: int) -> tuple[set[str], set[str | None]]:
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=seed)
    sim.run()
    honest = [n for n in nodes if n.key.hex() in HONEST_KEYS]
    return {n.machine.state for n in honest}, {n.machine.result_output for n in honest}


HONEST_KEYS = {pubkey(k).hex() for k in range(10)}


def _adv(k: int, text: str, **kw) -> Node:
    return Node(pubkey(100 + k), text, 1_003 + k, **kw)


@pytest.mark.parametrize("kind", [*KINDS, "mixed"])
def test_two_adversaries_with_greedy_honest_nodes(corpus, corpus_embed, kind: str) -> None:
    for i, it in enumerate(corpus["items"]):
        honest = [Node(pubkey(k), it["greedy"], 1_000 + 11 * k) for k in range(3)]
        if kind == "mixed":
            adv = [_adv(0, it["adversarial"]["random_text"]), _adv(1, it["adversarial"]["truncated"])]
        else:
            adv = [_adv(0, it["adversarial"][kind]), _adv(1, it["adversarial"][kind])]
        states, outputs = _run(honest + adv, corpus_embed, seed=i)
        assert states == {"succeeded"} and outputs == {it["greedy"]}, (i, kind, states)


@pytest.mark.parametrize("kind", KINDS)
def test_two_adversaries_with_sampled_honest_nodes(corpus, corpus_embed, kind: str) -> None:
    """Temperature 0.7: never an adversarial output; a failure to agree is allowed."""
    runs = succeeded = 0
    for i, it in enumerate(corpus["items"]):
        pool = [it["greedy"], *it["sampled_t07"]]
        for combo in itertools.islice(itertools.combinations(range(len(pool)), 3), 0, None, 12):
            honest = [Node(pubkey(k), pool[c], 1_000 + 11 * k) for k, c in enumerate(combo)]
            adv = [_adv(0, it["adversarial"][kind]), _adv(1, it["adversarial"][kind])]
            states, outputs = _run(honest + adv, corpus_embed, seed=runs)
            runs += 1
            assert len(states) == 1, states
            if states == {"succeeded"}:
                succeeded += 1
                assert len(outputs) == 1 and outputs <= set(pool), (i, kind, outputs)
            else:
                assert outputs == {None}
    assert succeeded >= 0.85 * runs, (succeeded, runs)


@pytest.mark.parametrize("n_honest", [3, 5])
def test_copied_commit_and_wrong_reveal(corpus, corpus_embed, n_honest: int) -> None:
    for i, it in enumerate(corpus["items"]):
        honest = [Node(pubkey(k), it["greedy"], 1_000 + 11 * k) for k in range(n_honest)]
        adv = [
            # commits the victim's commit bytes and reveals its output: does not open
            _adv(0, it["adversarial"]["off_topic"], copy_from=0),
            # commits to an off-topic answer, reveals the honest text with that b
            _adv(1, it["adversarial"]["off_topic"], reveal_text=it["greedy"]),
        ]
        sim = Sim(honest + adv, corpus_embed, PARAMS, CONFIG, seed=i)
        sim.run()
        for n in honest:
            st = n.machine.reveal_statuses()
            assert st[pubkey(100).hex()] == "rejected:commit_mismatch"
            assert st[pubkey(101).hex()] == "rejected:embedding_mismatch"
            if n_honest == 3:
                assert n.machine.state == "failed:not_enough_valid_reveals"
            else:
                assert n.machine.state == "succeeded" and n.machine.result_output == it["greedy"]
