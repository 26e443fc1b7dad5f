// corral chat page: talks to the server's OpenAI-compatible API (GET /v1/models, POST /v1/chat/completions with
// stream: true). No framework, no build step. The conversation lives only in this page (`history`); model output is
// always written with text nodes, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const el = {
  model: $("model"), newChat: $("new-chat"), settings: $("settings"), system: $("system"),
  temperature: $("temperature"), temperatureValue: $("temperature-value"), maxTokens: $("max-tokens"),
  apiKey: $("api-key"), status: $("status"), transcript: $("transcript"), composer: $("composer"),
  message: $("message"), send: $("send"), stop: $("stop"),
};
const API_KEY_STORAGE = "corral.apiKey";

let history = [];        // [{role, content}], user and assistant turns only; the system prompt is added per request
let controller = null;   // AbortController of the request in flight, or null when idle

// --- small helpers -------------------------------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = el.apiKey.value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function setStatus(text, isError = false) {
  el.status.textContent = text;
  el.status.classList.toggle("error", isError);
}

function setBusy(busy) {
  el.send.disabled = busy;
  el.stop.disabled = !busy;
  el.composer.setAttribute("aria-busy", busy ? "true" : "false");
}

// Keep following the stream only while the reader is already at (or near) the bottom.
function nearBottom() {
  const t = el.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 60;
}

function scrollToEnd() {
  el.transcript.scrollTop = el.transcript.scrollHeight;
}

function addMessage(role, text = "") {
  el.transcript.querySelector(".empty-hint")?.remove();
  const msg = document.createElement("article");
  msg.className = `msg ${role}`;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  const textNode = document.createTextNode(text);
  body.append(textNode);
  msg.append(who, body);
  el.transcript.append(msg);
  scrollToEnd();
  return { msg, body, textNode };
}

function addMeta(msg, text, isError = false) {
  const meta = document.createElement("p");
  meta.className = isError ? "meta error" : "meta";
  if (isError) meta.setAttribute("role", "alert");
  meta.textContent = text;
  msg.append(meta);
}

// An HTTP error body is OpenAI-style {"error": {"message", "type", "param", "code"}}; anything else is shown raw.
async function errorText(resp) {
  const raw = await resp.text().catch(() => "");
  let message = raw.trim() || resp.statusText || "request failed";
  try {
    const err = JSON.parse(raw).error;
    if (err && err.message) {
      message = err.message;
      if (err.param) message += ` (param: ${err.param})`;
      if (err.code || err.type) message += ` [${err.code || err.type}]`;
    }
  } catch (_) { /* not JSON: keep the raw text */ }
  return `HTTP ${resp.status}: ${message}`;
}

// --- models ----------------------------------------------------------------------------------------------------

async function loadModels() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) {
      setStatus(`Could not list models. ${await errorText(resp)}`, true);
      // Most likely a missing or wrong API key: show the settings (folded away in a narrow window) at that field.
      el.settings.open = true;
      if (resp.status === 401) el.apiKey.focus();
      return;
    }
    const ids = ((await resp.json()).data || []).map((m) => m.id);
    const previous = el.model.value;
    el.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(previous)) el.model.value = previous;
    setStatus(ids.length ? `Ready: ${ids.length} model${ids.length > 1 ? "s" : ""}.` : "The server lists no models.",
              !ids.length);
  } catch (e) {
    setStatus(`Could not reach the server: ${e.message}`, true);
    el.settings.open = true;
  }
}

// --- chat ------------------------------------------------------------------------------------------------------

function requestBody() {
  const messages = [];
  const system = el.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = {
    model: el.model.value || undefined,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number(el.temperature.value),
  };
  const maxTokens = parseInt(el.maxTokens.value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

// Reads an SSE body and calls onEvent(obj) for each `data: {...}` line; returns when `data: [DONE]` arrives or the
// body ends. Lines may be split across chunks, so a partial last line is kept for the next read.
async function readSSE(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const rawLine of lines) {
        const line = rawLine.replace(/\r$/, "");
        if (!line.startsWith("data:")) continue;  // blank separators, comments, `event:` lines
        const data = line.slice(5).trim();
        if (data === "[DONE]") return true;
        if (data) onEvent(JSON.parse(data));
      }
    }
    return false;
  } finally {
    // After Stop, an error event or bad JSON, this closes the connection, which tells the server to stop generating.
    reader.cancel().catch(() => {});
  }
}

function statsText(usage, nChunks, t0, tFirst, tEnd) {
  const completion = usage ? usage.completion_tokens : nChunks;
  const parts = [];
  if (usage) parts.push(`${usage.prompt_tokens} prompt tokens`);
  parts.push(`${completion} token${completion === 1 ? "" : "s"}${usage ? "" : " (approx.)"}`);
  if (tFirst !== null) {
    parts.push(`first token ${((tFirst - t0) / 1000).toFixed(2)} s`);
    const decodeSeconds = (tEnd - tFirst) / 1000;
    if (completion > 1 && decodeSeconds > 0) parts.push(`${((completion - 1) / decodeSeconds).toFixed(1)} tok/s`);
  }
  return parts.join(" · ");
}

async function send() {
  const text = el.message.value.trim();
  if (!text || controller) return;
  el.message.value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const { msg, body, textNode } = addMessage("assistant");
  msg.setAttribute("aria-busy", "true");

  controller = new AbortController();
  const signal = controller.signal;
  setBusy(true);
  let answer = "";
  let usage = null;
  let finish = null;
  let nChunks = 0;
  const t0 = performance.now();
  let tFirst = null;
  let failure = null;

  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal,
    });
    if (!resp.ok) {
      failure = await errorText(resp);
    } else {
      const sawDone = await readSSE(resp, (event) => {
        if (event.error) throw new Error(event.error.message || JSON.stringify(event.error));
        const choice = event.choices && event.choices[0];
        const delta = choice && choice.delta && choice.delta.content;
        if (delta) {
          const follow = nearBottom();
          if (tFirst === null) tFirst = performance.now();
          nChunks += 1;
          answer += delta;
          textNode.appendData(delta);
          if (follow) scrollToEnd();
        }
        if (choice && choice.finish_reason) finish = choice.finish_reason;
        if (event.usage) usage = event.usage;
      });
      if (!sawDone && !signal.aborted) failure = "The stream ended early (no [DONE]).";
    }
  } catch (e) {
    if (!signal.aborted) failure = e.message || String(e);
  }

  const tEnd = performance.now();
  const stopped = signal.aborted;
  if (answer) {
    history.push({ role: "assistant", content: answer });
  } else {
    // Nothing came back: drop the turn so the next request is not two user messages in a row.
    history.pop();
    if (!el.message.value) el.message.value = text;
    body.classList.add("empty");
    body.textContent = stopped ? "(stopped before any text)" : "(no answer)";
  }
  if (failure) addMeta(msg, `Error: ${failure}`, true);
  let stats = statsText(usage, nChunks, t0, tFirst, tEnd);
  if (stopped) stats += " · stopped";
  else if (finish === "length") stats += " · hit max tokens";
  if (!failure || answer) addMeta(msg, stats);
  msg.removeAttribute("aria-busy");
  msg.setAttribute("data-done", "1");
  controller = null;
  setBusy(false);
  scrollToEnd();
  el.message.focus();
}

function stop() {
  if (controller) controller.abort();
}

function newChat() {
  stop();
  history = [];
  const hint = document.createElement("p");
  hint.className = "empty-hint";
  hint.textContent = "New conversation. The model remembers nothing from before.";
  el.transcript.replaceChildren(hint);
  el.message.focus();
}

// --- wiring ----------------------------------------------------------------------------------------------------

el.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
el.message.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter inserts a newline; Enter that confirms an IME composition does neither.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
el.stop.addEventListener("click", stop);
el.newChat.addEventListener("click", newChat);
el.temperature.addEventListener("input", () => {
  el.temperatureValue.textContent = String(Number(el.temperature.value));
});
// Enter in a settings field would submit the form and reload the page; treat it as "apply" instead.
$("settings-form").addEventListener("submit", (e) => {
  e.preventDefault();
  el.apiKey.dispatchEvent(new Event("change"));
});
el.apiKey.value = localStorage.getItem(API_KEY_STORAGE) || "";
el.apiKey.addEventListener("change", () => {
  const key = el.apiKey.value.trim();
  if (key) localStorage.setItem(API_KEY_STORAGE, key);
  else localStorage.removeItem(API_KEY_STORAGE);
  loadModels();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && controller) stop();
});
// Narrow windows start with the settings folded away so the conversation gets the room.
if (window.matchMedia("(max-width: 700px)").matches) el.settings.open = false;

el.message.focus();
loadModels();
