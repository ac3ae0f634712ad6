// The FlashStream playground: a chat over the OpenAI-compatible API and a live view of the engine.
// Plain browser JavaScript, no build step. Both streams are read with fetch (not EventSource) so that
// the API key can travel in the Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
const STAGES = ["gateway", "tokenizer", "queue", "prefill", "decode"];
const HISTORY = 120; // samples kept for the chart
const state = { messages: [], abort: null, engineAbort: null, history: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// Yields [eventName, parsedData] for each server-sent event of a fetch response body.
async function* sseEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (!data.length) continue;
      const text = data.join("\n");
      yield [name, text === "[DONE]" ? null : JSON.parse(text)];
    }
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

// ---- models ----

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("chat-status").textContent = "models: " + (await errorText(response));
    return;
  }
  const body = await response.json();
  const select = $("model");
  const previous = select.value;
  select.innerHTML = "";
  for (const card of body.data) {
    const option = document.createElement("option");
    option.value = option.textContent = card.id;
    select.appendChild(option);
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  watchEngine();
}

// ---- chat ----

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function samplingBody() {
  const body = {
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
  const topK = Number($("top_k").value);
  if (topK > 0) body.top_k = topK;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("ignore_eos").checked) body.ignore_eos = true;
  return body;
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.abort) return;
  $("prompt").value = "";
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.dataset.state = "streaming";
  const controller = new AbortController();
  state.abort = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  $("chat-status").textContent = "waiting for the first token";
  const started = performance.now();
  let firstToken = null;
  let latency = null;
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: $("model").value, messages: state.messages, stream: true,
        stream_options: { include_usage: true, include_latency: true }, ...samplingBody(),
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const [, chunk] of sseEvents(response, controller.signal)) {
      if (chunk === null) break;
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      if (chunk.latency) latency = chunk.latency;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (piece) {
          if (firstToken === null) {
            firstToken = performance.now() - started;
            $("chat-status").textContent = "streaming";
          }
          out.textContent += piece;
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    }
    state.messages.push({ role: "assistant", content: out.textContent });
    const total = performance.now() - started;
    $("chat-status").textContent = "done";
    showLatency(latency, usage, firstToken, total);
  } catch (err) {
    if (controller.signal.aborted) {
      $("chat-status").textContent = "stopped";
      state.messages.push({ role: "assistant", content: out.textContent });
    } else {
      out.classList.add("error");
      out.textContent += (out.textContent ? "\n" : "") + "error: " + err.message;
      state.messages.pop(); // the failed turn is not part of the conversation
      $("chat-status").textContent = "failed";
    }
  } finally {
    out.dataset.state = "done";
    state.abort = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

function showLatency(latency, usage, firstTokenMs, totalMs) {
  const body = $("latency").querySelector("tbody");
  const bar = $("latency-bar");
  body.innerHTML = "";
  bar.innerHTML = "";
  const rows = [];
  let inStages = 0;
  if (latency) {
    for (const stage of STAGES) {
      const seconds = latency[stage + "_s"] || 0;
      inStages += seconds;
      rows.push([stage, seconds * 1000]);
    }
  }
  rows.push(["other", Math.max(0, totalMs - inStages * 1000)]); // network, HTTP and the browser
  for (const [stage, ms] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.stage = stage;
    tr.innerHTML = `<td><span class="stage-${stage}">&nbsp;&nbsp;</span> ${stage}</td><td class="value">${ms.toFixed(1)} ms</td>`;
    body.appendChild(tr);
    const span = document.createElement("span");
    span.className = "stage-" + stage;
    span.style.flexGrow = String(ms);
    span.title = `${stage}: ${ms.toFixed(1)} ms`;
    bar.appendChild(span);
  }
  const extra = [["time to first token", firstTokenMs === null ? "-" : firstTokenMs.toFixed(1) + " ms"],
                 ["total", totalMs.toFixed(1) + " ms"]];
  if (usage) {
    extra.push(["tokens (prompt / generated / cached)",
                `${usage.prompt_tokens} / ${usage.completion_tokens} / ${(usage.prompt_tokens_details || {}).cached_tokens || 0}`]);
  }
  for (const [name, value] of extra) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${name}</td><td class="value">${value}</td>`;
    body.appendChild(tr);
  }
}

// ---- engine ----

const percent = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + " %");
const number = (x, digits) => (x === null || x === undefined ? "-" : x.toFixed(digits));

function showEngine(e) {
  $("engine-running").textContent = e.num_running;
  $("engine-waiting").textContent = e.num_waiting;
  $("engine-kv").textContent = percent(e.kv_cache_usage);
  $("engine-tokens-per-step").textContent = number(e.tokens_per_step, 1);
  $("engine-steps-per-s").textContent = number(e.steps_per_s, 1);
  $("engine-tokens-per-s").textContent = number(e.generated_tokens_per_s, 1);
  $("engine-steps").textContent = e.num_steps;
  $("engine-prefix-hits").textContent = percent(e.prefix_cache_hit_rate);
  $("engine-result-hits").textContent = percent(e.result_cache_hit_rate);
  const tbody = $("workers").querySelector("tbody");
  tbody.innerHTML = "";
  for (const w of e.workers) {
    const tr = document.createElement("tr");
    for (const value of [w.address, w.num_running, w.num_waiting, percent(w.kv_cache_usage)]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  state.history.push(e);
  if (state.history.length > HISTORY) state.history.shift();
  drawChart();
}

function drawChart() {
  const canvas = $("engine-chart");
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  g.clearRect(0, 0, w, h);
  const samples = state.history;
  if (samples.length < 2) return;
  const maxCount = Math.max(1, ...samples.map((s) => Math.max(s.num_running, s.num_waiting)));
  const maxTps = Math.max(1, ...samples.map((s) => s.tokens_per_step || 0));
  const x = (i) => pad + (i * (w - 2 * pad)) / (HISTORY - 1);
  const line = (color, value) => {
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    samples.forEach((s, i) => {
      const y = h - pad - value(s) * (h - 2 * pad);
      if (i === 0) g.moveTo(x(i), y); else g.lineTo(x(i), y);
    });
    g.stroke();
  };
  line("#2160c4", (s) => s.num_running / maxCount);
  line("#d9480f", (s) => s.num_waiting / maxCount);
  line("#2b8a3e", (s) => s.kv_cache_usage);
  line("#7048e8", (s) => (s.tokens_per_step || 0) / maxTps);
}

async function watchEngine() {
  if (state.engineAbort) state.engineAbort.abort();
  const controller = new AbortController();
  state.engineAbort = controller;
  state.history = [];
  const model = $("model").value;
  while (!controller.signal.aborted) {
    try {
      const url = "/engine/state?interval_s=0.25&model=" + encodeURIComponent(model);
      const response = await fetch(url, { headers: headers(), signal: controller.signal });
      if (!response.ok) throw new Error(await errorText(response));
      $("engine-status").textContent = "live";
      for await (const [name, data] of sseEvents(response, controller.signal)) {
        if (name === "error") throw new Error(data.error.message);
        showEngine(data);
      }
      $("engine-status").textContent = "reconnecting";
    } catch (err) {
      if (controller.signal.aborted) return;
      $("engine-status").textContent = "disconnected: " + err.message;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// ---- wiring ----

$("chat-form").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
$("stop").addEventListener("click", () => state.abort && state.abort.abort());
$("clear").addEventListener("click", () => {
  state.messages = [];
  $("messages").innerHTML = "";
});
$("model").addEventListener("change", () => {
  state.messages = [];
  $("messages").innerHTML = "";
  watchEngine();
});
$("api-key").value = localStorage.getItem("flashstream-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("flashstream-api-key", $("api-key").value.trim());
  loadModels();
});
loadModels();
