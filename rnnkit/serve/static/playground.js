// rnnkit playground: streams /generate (NDJSON), shows each step's next-token distribution,
// and colours the text by one hidden unit or gate through /activations. Plain JavaScript,
// no libraries, no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],        // the language models of /models
  model: null,       // the one selected
  steps: [],         // token events of the current generation, in order
  spans: [],         // one per character (character models) or text piece, in text order
  text: "",          // prompt + generated text, as shown
  current: 0,        // the step the latest text belongs to
  pinned: null,      // a step the user clicked, or null (follow the latest)
  controller: null,  // aborts the running generation
  colourPending: false, colourBusy: false, colourLast: 0,
};

function setStatus(message, error = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", error);
}

function visible(token) {
  // A token as a readable label: whitespace made visible.
  return token.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5") || "\u2205";
}

async function errorOf(response) {
  try { return (await response.json()).error || response.statusText; }
  catch (e) { return `${response.status} ${response.statusText}`; }
}

// -- models --------------------------------------------------------------------------------

async function loadModels() {
  const response = await fetch("/models");
  if (!response.ok) { setStatus(await errorOf(response), true); return; }
  const all = (await response.json()).models;
  state.models = all.filter((m) => m.endpoints.includes("generate"));
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) select.add(new Option(`${m.name} (${m.task})`, m.name));
  if (!state.models.length) { setStatus("no language model is loaded", true); return; }
  chooseModel();
  document.body.dataset.state = "ready";
}

function chooseModel() {
  const m = state.models.find((x) => x.name === $("model").value) || state.models[0];
  state.model = m;
  const s = m.sizes;
  $("model-info").textContent =
    `${m.level || ""} ${m.cell} ${s.num_layers}\u00d7${s.hidden_size}, vocabulary ${s.vocab_size}`;
  $("condition-box").hidden = m.task !== "conditioned_lm";
  const colourable = m.endpoints.includes("activations") && m.level === "char";
  $("colouring").disabled = !colourable;
  $("colour-note").textContent = colourable ? "" :
    "The activation view needs a character-level language model (as `rnnkit activations`).";
  const kinds = $("kind"), layers = $("layer");
  kinds.innerHTML = ""; layers.innerHTML = "";
  for (const k of m.activation_kinds || ["hidden"]) kinds.add(new Option(k, k));
  for (let l = s.num_layers - 1; l >= 0; l--) layers.add(new Option(String(l), String(l)));
  $("unit").max = $("unit-range").max = String(s.hidden_size - 1);
  recolour();
}

// -- generation ----------------------------------------------------------------------------

function request() {
  const body = { model: state.model.name, prime: $("prompt").value,
                 length: Number($("length").value), top: 10 };
  if ($("greedy").checked) {
    body.greedy = true;
  } else {
    const t = Number($("temperature").value), k = Number($("top-k").value);
    const p = Number($("top-p").value);
    if (t !== 1) body.temperature = t;
    if (k > 0) body.top_k = k;
    if (p < 1) body.top_p = p;
  }
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (state.model.task === "conditioned_lm") body.condition = $("condition").value;
  return body;
}

function addText(text, cls, step) {
  // Character models: one span per character (the activation view colours characters).
  const out = $("output");
  const pieces = state.model.level === "char" ? Array.from(text) : [text];
  for (const piece of pieces) {
    const span = document.createElement("span");
    span.textContent = piece;
    span.className = cls;
    if (step !== null) span.dataset.step = String(step);
    out.appendChild(span);
    state.spans.push(span);
  }
  state.text += text;
  out.scrollTop = out.scrollHeight;
}

async function generate() {
  stop();
  state.steps = []; state.spans = []; state.text = ""; state.current = 0; state.pinned = null;
  $("output").innerHTML = "";
  $("bars").innerHTML = ""; $("dist-step").textContent = "";
  addText($("prompt").value, "prompt", null);
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true; $("stop").disabled = false;
  document.body.dataset.state = "generating";
  setStatus("generating\u2026");
  try {
    const response = await fetch("/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request()), signal: controller.signal });
    if (!response.ok) throw new Error(await errorOf(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.trim()) handle(JSON.parse(line));
      }
    }
    if (document.body.dataset.state === "generating") setStatus("stopped");
  } catch (error) {
    if (error.name === "AbortError") setStatus("stopped");
    else setStatus(String(error.message || error), true);
    document.body.dataset.state = "failed";
  } finally {
    if (state.controller === controller) state.controller = null;
    $("generate").disabled = false; $("stop").disabled = true;
    recolour();
  }
}

function handle(event) {
  if (event.event === "token") {
    state.steps.push(event);
    state.current = event.index;
    if (state.pinned === null) showStep(state.steps.length - 1);
  } else if (event.event === "text") {
    addText(event.text, "gen", state.current);
    recolourSoon();
  } else if (event.event === "done") {
    setStatus(`done: ${event.tokens} tokens`);
    document.body.dataset.state = "done";
  } else if (event.event === "error") {
    setStatus(event.error, true);
    document.body.dataset.state = "failed";
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

// -- the distribution ----------------------------------------------------------------------

function showStep(k) {
  const step = state.steps[k];
  if (!step) return;
  $("dist-step").textContent = `step ${step.index}: chose \u201c${visible(step.token)}\u201d ` +
    `(p ${step.p.toFixed(3)})`;
  const bars = $("bars");
  bars.innerHTML = "";
  for (const entry of step.top) {
    const li = document.createElement("li");
    if (entry.id === step.id) li.className = "chosen";
    const tok = document.createElement("span");
    tok.className = "tok"; tok.textContent = visible(entry.token); tok.title = entry.token;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill"; fill.style.width = `${(100 * entry.p_sample).toFixed(1)}%`;
    const model = document.createElement("span");
    model.className = "model"; model.style.left = `${(100 * entry.p).toFixed(1)}%`;
    bar.append(fill, model);
    const pct = document.createElement("span");
    pct.className = "pct"; pct.textContent = `${(100 * entry.p_sample).toFixed(1)}%`;
    li.append(tok, bar, pct);
    bars.appendChild(li);
  }
  for (const span of $("output").querySelectorAll(".shown")) span.classList.remove("shown");
  for (const span of $("output").querySelectorAll(`[data-step="${step.index}"]`)) {
    span.classList.add("shown");
  }
}

function stepOf(target) {
  const s = target && target.dataset ? target.dataset.step : undefined;
  return s === undefined ? null : state.steps.findIndex((e) => String(e.index) === s);
}

$("output").addEventListener("mouseover", (e) => {
  const k = stepOf(e.target);
  if (k !== null && k >= 0) showStep(k);
});
$("output").addEventListener("mouseleave", () => {
  showStep(state.pinned !== null ? state.pinned : state.steps.length - 1);
});
$("output").addEventListener("click", (e) => {
  const k = stepOf(e.target);
  for (const span of $("output").querySelectorAll(".pinned")) span.classList.remove("pinned");
  state.pinned = k !== null && k >= 0 && k !== state.pinned ? k : null;
  if (state.pinned !== null) {
    for (const span of $("output").querySelectorAll(`[data-step="${state.steps[k].index}"]`)) {
      span.classList.add("pinned");
    }
  }
  showStep(state.pinned !== null ? state.pinned : state.steps.length - 1);
});

// -- colouring by a unit (the activation view of `rnnkit activations`) ----------------------

function recolourSoon() {
  // While text streams in: at most one request in flight, and not more than 4 a second.
  if (!$("colour").checked || state.colourBusy) { state.colourPending = true; return; }
  const wait = Math.max(0, 250 - (Date.now() - state.colourLast));
  state.colourBusy = true;
  setTimeout(() => { state.colourBusy = false; recolour(); }, wait);
}

async function recolour() {
  const out = $("output");
  if (!$("colour").checked || $("colouring").disabled || !state.text) {
    out.classList.remove("coloured");
    for (const span of state.spans) { span.style.background = ""; span.style.color = ""; }
    $("legend").innerHTML = "";
    return;
  }
  state.colourPending = false; state.colourBusy = true; state.colourLast = Date.now();
  const body = { model: state.model.name, text: state.text, kind: $("kind").value,
                 layer: Number($("layer").value), unit: Number($("unit").value) };
  try {
    const response = await fetch("/activations", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    if (!response.ok) { $("colour-note").textContent = await errorOf(response); return; }
    const view = await response.json();
    out.classList.add("coloured");
    state.spans.forEach((span, i) => {
      span.style.background = i < view.colours.length ? view.colours[i] : "";
      // white letters on the darkest backgrounds, as they would vanish in black
      const strong = i < view.values.length && view.scale > 0 &&
        Math.abs(view.values[i]) / view.scale > 0.6;
      span.style.color = strong ? "white" : "";
      if (i < view.values.length) span.title = `${view.kind} unit ${view.unit}: ${view.values[i].toFixed(3)}`;
    });
    $("legend").innerHTML =
      `<span style="background:rgb(0,0,255)">\u2212${view.scale.toFixed(2)}</span> \u2026 white 0 \u2026 ` +
      `<span style="background:rgb(255,0,0)">+${view.scale.toFixed(2)}</span>`;
    $("colour-note").textContent = view.note ||
      `${view.kind} unit ${view.unit} of layer ${view.layer}: ${view.range[0].toFixed(2)} .. ${view.range[1].toFixed(2)}`;
  } catch (error) {
    $("colour-note").textContent = String(error.message || error);
  } finally {
    state.colourBusy = false;
    if (state.colourPending) recolourSoon();
  }
}

// -- wiring --------------------------------------------------------------------------------

function showValue(input, output) {
  const update = () => { $(output).textContent = Number($(input).value).toFixed(2); };
  $(input).addEventListener("input", update);
  update();
}

showValue("temperature", "temperature-value");
showValue("top-p", "top-p-value");
$("greedy").addEventListener("change", () => {
  for (const id of ["temperature", "top-k", "top-p"]) $(id).disabled = $("greedy").checked;
});
$("model").addEventListener("change", chooseModel);
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", stop);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
});
$("unit").addEventListener("input", () => { $("unit-range").value = $("unit").value; recolour(); });
$("unit-range").addEventListener("input", () => { $("unit").value = $("unit-range").value; recolour(); });
for (const id of ["colour", "kind", "layer"]) $(id).addEventListener("change", recolour);
loadModels().catch((error) => setStatus(String(error.message || error), true));
