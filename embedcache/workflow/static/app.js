// The labelling page. Everything from the server (ids, texts, class and group names) is untrusted:
// it is put on the page with textContent or as attribute values, never parsed as HTML.
"use strict";

const TAB_KEY = "embedcache-tab";
const tab = sessionStorage.getItem(TAB_KEY) || (() => {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  const id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem(TAB_KEY, id);
  return id;
})();

let state = null;
let busy = false;

const $ = (id) => document.getElementById(id);

function make(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function percent(x) {
  return `${Math.round(100 * x)}%`;
}

function showStatus(text, bad) {
  const status = $("status");
  status.textContent = text || "";
  status.className = bad ? "bad" : "";
}

async function call(path, payload) {
  if (busy) return;
  busy = true;
  document.body.classList.add("busy");
  try {
    const options = payload === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ tab, ...payload }),
    };
    const url = payload === undefined ? `${path}?tab=${encodeURIComponent(tab)}` : path;
    const response = await fetch(url, options);
    const data = await response.json();
    if (!response.ok) {
      showStatus(data.error || response.statusText, true);
    } else {
      render(data);
    }
  } catch (error) {
    showStatus(`The server did not answer (${error}). Is embedcache label still running?`, true);
  } finally {
    busy = false;
    document.body.classList.remove("busy");
  }
}

function label(name) {
  if (state && state.example) call("/api/label", { id: state.example.id, label: name });
}

function skip() {
  if (state && state.example) call("/api/skip", { id: state.example.id });
}

function undo() {
  call("/api/undo", {});
}

function renderExample(example, strategy) {
  const box = $("example");
  const image = $("example-image");
  $("done").hidden = example !== null;
  box.hidden = example === null;
  box.dataset.id = example ? example.id : "";
  document.body.dataset.example = example ? example.id : "";
  if (!example) {
    $("guess").textContent = "";
    return;
  }
  $("example-id").textContent = example.id;
  if (example.image) {
    image.src = example.image;
    image.hidden = false;
  } else {
    image.removeAttribute("src");
    image.hidden = true;
  }
  $("example-text").textContent = example.text || "";
  $("example-text").hidden = !example.text;
  $("example-missing").textContent = example.image_error || "";
  $("example-missing").hidden = !example.image_error;
  const guess = $("guess");
  guess.replaceChildren();
  if (example.predicted === null) {
    guess.append(make("span", "No model yet: examples come in a seeded random order until the first label."));
  } else {
    guess.append(make("span", "Model: "), make("strong", example.predicted),
      make("span", ` (${percent(example.confidence)} sure) · picked by ${strategy}`, "dim"));
  }
}

function renderClasses(classes, fixed) {
  const box = $("classes");
  box.replaceChildren();
  classes.forEach((name, i) => {
    const button = make("button", null, "class");
    button.type = "button";
    button.dataset.label = name;
    if (i < 9) button.append(make("kbd", String(i + 1)));
    button.append(make("span", name));
    button.addEventListener("click", () => label(name));
    box.append(button);
  });
  $("new-class").hidden = fixed;
}

function renderCounts(panel) {
  const table = $("counts");
  table.replaceChildren();
  const total = Math.max(1, panel.labelled);
  for (const [name, count] of Object.entries(panel.counts)) {
    const row = make("tr");
    const bar = make("div", null, "bar");
    bar.style.width = percent(count / total);
    const cell = make("td", null, "barcell");
    cell.append(bar);
    row.append(make("td", name), make("td", count, "num"), cell);
    table.append(row);
  }
  $("pool").textContent = `${panel.labelled} labelled · ${panel.pool_left} left in the pool` +
    (panel.skipped ? ` · ${panel.skipped} skipped` : "");
  $("progress").textContent = `${panel.labelled} labelled`;
}

function renderChanges(changes) {
  const box = $("changes");
  box.replaceChildren();
  const of = changes.stop_set.toLocaleString();
  const line = (text) => box.append(make("p", text));
  if (changes.previous === null) {
    line(`Predictions on a stop set of ${of} pool examples appear after the first labels.`);
  } else {
    line(`Since the previous label: ${changes.previous} of ${of} stop-set predictions changed.`);
  }
  if (changes.round !== null) {
    line(`Since the round at ${changes.round.since_labels} labels: ${changes.round.changed} changed.`);
  }
}

function renderSignals(panel) {
  const table = $("signals");
  table.replaceChildren();
  const head = make("tr");
  head.append(make("th", "signal"), make("th", "value"), make("th", "stop at"), make("th", ""));
  table.append(head);
  for (const signal of panel.signals) {
    const row = make("tr");
    row.title = signal.rule;
    const value = signal.value === null ? "–" : signal.value.toFixed(3);
    const comparison = signal.name === "stabilizing-predictions" ? "≥ " : "≤ ";
    row.append(make("td", signal.name), make("td", value, "num"), make("td", comparison + signal.threshold, "num"),
      make("td", signal.stop ? "stop" : "", signal.stop ? "stop" : ""));
    table.append(row);
  }
  $("signals-note").textContent = `${panel.rounds} round(s) of ${panel.round_size} labels so far; ` +
    "hover a signal for its rule.";
}

function renderGroups(groups, classes) {
  const names = Object.keys(groups);
  $("groups-section").hidden = names.length === 0;
  const box = $("groups");
  box.replaceChildren();
  for (const name of names) {
    const table = make("table", null, "groups");
    const head = make("tr");
    head.append(make("th", name));
    classes.forEach((c) => head.append(make("th", c, "num")));
    table.append(head);
    for (const [value, perClass] of Object.entries(groups[name])) {
      const row = make("tr");
      row.append(make("td", value));
      classes.forEach((c) => row.append(make("td", perClass[c] || 0, "num")));
      table.append(row);
    }
    box.append(table);
  }
}

function render(data) {
  state = data;
  $("title").textContent = data.title;
  document.title = `embedcache · label · ${data.title}`;
  showStatus([data.message, ...data.warnings].filter(Boolean).join(" "), data.conflict);
  renderExample(data.example, data.strategy);
  renderClasses(data.classes, data.fixed_classes);
  renderCounts(data.panel);
  renderChanges(data.panel.changes);
  renderSignals(data.panel);
  renderGroups(data.panel.groups, data.classes);
  document.body.dataset.labelled = String(data.panel.labelled);
  document.body.dataset.ready = "1";
}

function toggleHelp(show) {
  const help = $("help");
  help.hidden = show === undefined ? !help.hidden : !show;
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "?") { toggleHelp(); event.preventDefault(); return; }
  if (event.key === "Escape") { toggleHelp(false); return; }
  if (!state || busy) return;
  if (/^[1-9]$/.test(event.key)) {
    const name = state.classes[Number(event.key) - 1];
    if (name !== undefined) label(name);
  } else if (event.key === "s") {
    skip();
  } else if (event.key === "u") {
    undo();
  } else {
    return;
  }
  event.preventDefault();
});

document.addEventListener("DOMContentLoaded", () => {
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("help-button").addEventListener("click", () => toggleHelp());
  $("new-class").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("new-class-name").value.trim();
    if (name) {
      $("new-class-name").value = "";
      label(name);
    }
  });
  call("/api/state");
});
