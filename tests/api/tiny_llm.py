"""An LLM for the API tests with the `engine.LLMEngine` surface the API uses.

Runs the tiny random Llama through Hugging Face `generate` on a worker thread and
streams real `engine.types.TokenEvent`s then a `GenerationResult`, so the API code
paths (streaming, usage, finish reasons, abort) are exercised against real tokens.
Used until `engine.LLMEngine` is available; it implements only what `node/api_openai.py`
calls: available_models, worker_states, run_inference, run_inference_non_streaming, abort.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from engine.queues import AsyncMailbox
from engine.types import GenerationRequest, GenerationResult, TokenEvent

TINY_MODEL = "tiny-llama"


class _Aborted(Exception):
    pass


class _Streamer(BaseStreamer):
    def __init__(self, on_token: Any) -> None:
        self.on_token = on_token
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # generate() first passes the prompt
            self.first = False
            return
        for tok in value.reshape(-1).tolist():
            self.on_token(int(tok))

    def end(self) -> None:
        pass


class TinyLLM:
    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self._lock = threading.Lock()  # one generation at a time: a single worker
        self._aborted: set[str] = set()
        self.busy = False
        self.requests_done = 0

    def available_models(self) -> list[str]:
        return [TINY_MODEL]

    def worker_states(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": f"{TINY_MODEL}-1",
                "model": TINY_MODEL,
                "kind": "llm",
                "state": "busy" if self.busy else "idle",
                "requests_done": self.requests_done,
            }
        ]

    def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)

    def close(self) -> None:
        pass

    def _generate(self, req: GenerationRequest, emit: Any) -> GenerationResult:
        t0 = time.perf_counter()
        if req.messages is not None:
            ids = self.tokenizer.apply_chat_template(
                req.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:
            ids = self.tokenizer(req.prompt, return_tensors="pt")["input_ids"]
        sp = req.sampling
        out_ids: list[int] = []
        ttft: list[float] = []
        prev_text = ""

        def on_token(tok: int) -> None:
            nonlocal prev_text
            if req.request_id in self._aborted:
                raise _Aborted
            if not ttft:
                ttft.append(time.perf_counter() - t0)
            out_ids.append(tok)
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            delta, prev_text = text[len(prev_text) :], text
            emit(TokenEvent(req.request_id, tok, delta, len(out_ids) - 1))

        kwargs: dict[str, Any] = {"max_new_tokens": sp.max_tokens, "do_sample": sp.temperature > 0}
        if sp.temperature > 0:
            kwargs.update(temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k or None)
            torch.manual_seed(sp.seed or 0)
        finish = "length"
        with self._lock:
            self.busy = True
            try:
                out = self.model.generate(
                    ids, streamer=_Streamer(on_token), pad_token_id=self.tokenizer.eos_token_id, **kwargs
                )
                if out.shape[1] - ids.shape[1] < sp.max_tokens:
                    finish = "stop"
            except _Aborted:
                finish = "abort"
            finally:
                self.busy = False
                self.requests_done += 1
                self._aborted.discard(req.request_id)
        return GenerationResult(
            request_id=req.request_id,
            text=prev_text,
            token_ids=out_ids,
            finish_reason=finish,
            prompt_tokens=int(ids.shape[1]),
            completion_tokens=len(out_ids),
            cached_tokens=0,
            ttft_s=ttft[0] if ttft else None,
            total_s=time.perf_counter() - t0,
        )

    async def run_inference(self, req: GenerationRequest) -> AsyncIterator[TokenEvent | GenerationResult]:
        mailbox: AsyncMailbox[Any] = AsyncMailbox()

        def work() -> None:
            try:
                mailbox.put(self._generate(req, mailbox.put))
            except BaseException as exc:  # noqa: BLE001 - delivered to the consumer
                mailbox.put(exc)

        threading.Thread(target=work, daemon=True).start()
        while True:
            item = await mailbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, GenerationResult):
                return

    async def run_inference_non_streaming(self, req: GenerationRequest) -> GenerationResult:
        async for item in self.run_inference(req):
            if isinstance(item, GenerationResult):
                return item
        raise RuntimeError("no result")
