// "Ask the network": a prompt sent through the verified path (/verified/v1/chat/completions,
// streaming). While consensus runs the node sends SSE comment lines
// (": stage=committed committed=2/3 revealed=0/3 verified=0/3"); then the agreed answer as
// chat.completion.chunk's, the last one carrying the `rakis` object (members, re-check
// verdicts, certificate URL). Everything from the network is inserted as text, never HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const keyInput = $("ask-key");
  keyInput.value = sessionStorage.getItem("rakis-api-key") || "";

  function headers() {
    const key = keyInput.value.trim();
    return { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) };
  }

  async function loadModels() {
    try {
      const r = await fetch("/verified/v1/models", { headers: headers() });
      if (!r.ok) return;
      const { data } = await r.json();
      const select = $("ask-model");
      const current = select.value;
      select.replaceChildren(...data.map((m) => {
        const o = document.createElement("option");
        o.value = m.id;
        o.textContent = `${m.id} (${m.nodes} node${m.nodes === 1 ? "" : "s"})`;
        return o;
      }));
      if (current) select.value = current;
    } catch (e) { console.warn("models", e); }
  }

  function setState(state) { $("ask-status").dataset.state = state; }

  function showProgress(line) {
    const fields = Object.fromEntries(line.slice(1).trim().split(/\s+/).map((kv) => kv.split("=")));
    if (fields.stage) $("ask-stage").textContent = fields.stage;
    for (const k of ["committed", "revealed", "verified"]) if (fields[k]) $(`ask-${k}`).textContent = fields[k];
    setState("running");
  }

  // Failure reasons in words (the code is the consensus reason or an HTTP-level code).
  const WORDS = {
    no_cluster_of_needed_size: "the nodes did not agree: no group of answers large enough was close together",
    not_enough_commits: "not enough nodes answered in time to reach the quorum",
    not_enough_valid_reveals: "too few answers passed verification to reach the quorum",
    failed_recheck: "answers failed the proof-of-inference re-check",
    expired: "the request expired before the network agreed",
    model_not_served: "no node on the network serves this model",
    rate_limited: "too many questions: wait a moment",
    too_many_concurrent: "too many questions in flight: wait for one to finish",
    missing_api_key: "this node needs an API key",
    invalid_api_key: "the API key is not valid",
  };

  function showError(err) {
    const words = WORDS[err.code] || "the network could not answer";
    $("ask-error").textContent = `${words} (${err.code}): ${err.message}`;
    setState("failed");
  }

  function showResult(rakis) {
    const members = new Set((rakis.members || []).map((m) => m.node_id));
    const rows = (rakis.reveals || []).map((r) => {
      const tr = document.createElement("tr");
      tr.className = "ask-reveal";
      const verdict = r.recheck ? r.recheck.status + (r.recheck.reason ? ` (${r.recheck.reason})` : "") : "not checked";
      for (const text of [String(r.node_id || "").slice(0, 12), r.model || "–", members.has(r.node_id) ? "yes" : "no", verdict]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    $("ask-reveals").querySelector("tbody").replaceChildren(...rows);
    $("ask-reveals").hidden = rows.length === 0;
    const link = $("ask-certificate");
    link.href = rakis.certificate_url;
    link.hidden = false;
    $("ask-stage").textContent = "done";
    setState("succeeded");
  }

  async function ask(e) {
    e.preventDefault();
    sessionStorage.setItem("rakis-api-key", keyInput.value.trim());
    for (const id of ["ask-answer", "ask-error", "ask-request", "ask-stage", "ask-committed", "ask-revealed", "ask-verified"]) $(id).textContent = id === "ask-answer" || id === "ask-error" ? "" : "–";
    $("ask-reveals").hidden = true;
    $("ask-certificate").hidden = true;
    setState("submitting");
    const body = {
      model: $("ask-model").value,
      messages: [{ role: "user", content: $("ask-prompt").value }],
      temperature: Number($("ask-temperature").value),
      max_tokens: Number($("ask-max-tokens").value),
      stream: true,
      rakis: { quorum: Number($("ask-quorum").value) },
    };
    let r;
    try {
      r = await fetch("/verified/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    } catch (err) { showError({ code: "network_error", message: err.message }); return; }
    const rid = r.headers.get("x-rakis-request-id");
    if (rid) $("ask-request").textContent = rid.slice(0, 16);
    if (!r.ok) {
      let err = { code: `http_${r.status}`, message: r.statusText };
      try { err = (await r.json()).error || err; } catch { /* not JSON */ }
      showError(err);
      return;
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let answer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (event.startsWith(": stage=")) { showProgress(event); continue; }
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.error) { showError(msg.error); continue; }
        for (const c of msg.choices || []) if (c.delta && c.delta.content) answer += c.delta.content;
        $("ask-answer").textContent = answer;
        if (msg.rakis) showResult(msg.rakis);
      }
    }
  }

  $("ask-form").addEventListener("submit", ask);
  loadModels();
  setInterval(loadModels, 15000);
})();
