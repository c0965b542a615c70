// The rapid-objection dashboard: plain JavaScript over the JSON API (docs/dashboard.md).
// Every text from the bus goes into the page as text (textContent), never as HTML.
"use strict";

const FEED_ROWS = 200; // live events kept on the page
const state = {
  config: null, status: null, lettersSeen: null, appsSeen: null, token: "", live: false,
};

// --- small helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function when(seconds) {
  const date = new Date(seconds * 1000);
  return `${date.toLocaleDateString()} ${clock(seconds)}`;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 120 ? `${seconds.toFixed(1)}s` : `${Math.round(seconds / 60)}m`;
}

function millis(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const ms = seconds * 1000;
  return `${ms.toFixed(ms < 1 ? 2 : 1)} ms`;
}

function yes(flag) {
  return h("span", { className: flag ? "good" : "bad" }, flag ? "yes" : "no");
}

function fill(table, rows, empty) {
  const body = table.tBodies[0];
  const columns = table.tHead.rows[0].cells.length;
  body.replaceChildren(...(rows.length ? rows : [h("tr", { className: "empty" },
    h("td", { colspan: columns }, empty))]));
}

function say(text, kind) {
  const message = $("#message");
  message.textContent = text;
  message.className = kind || "";
  message.hidden = false;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// An action: the answer's JSON, or an Error whose message the server gave (401, 403...).
async function act(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok) {
    const error = new Error(answer.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

function refused(error) {
  say(`refused (HTTP ${error.status || "?"}): ${error.message}`, "bad");
}

// --- the status (registries, plugins, consumers, failures) ---------------------------

function renderStatus(status) {
  state.status = status;
  const now = status.time;
  $("#totals").textContent =
    `${status.events} events in the stream, ${status.dead_letters} dead letters` +
    (status.signed ? ", signed" : ", unauthenticated");
  fill($("#registries"), status.registries.map((registry) => {
    const info = registry.info;
    return h("tr", { dataset: { registry: info.id } },
      h("td", {}, info.id), h("td", {}, info.host), h("td", {}, info.pid),
      h("td", {}, yes(registry.alive)), h("td", {}, (info.apps || []).join(", ") || "-"),
      h("td", {}, ago(now - info.seen)));
  }), "No registry has run in this namespace.");

  const rows = [];
  for (const plugin of status.plugins) {
    const alive = plugin.consumers.filter((consumer) => consumer.alive).length;
    const required = plugin.required
      ? h("span", { className: "good" }, "yes" +
          (plugin.required_by.length ? ` (${plugin.required_by.join(", ")})` : ""))
      : "no";
    rows.push(h("tr", { className: "plugin", dataset: { plugin: plugin.name } },
      h("td", {}, plugin.name), h("td", {}, plugin.version || "-"), h("td", {}, required),
      h("td", { className: alive || !plugin.required ? "" : "bad" },
        `${alive} / ${plugin.consumers.length}`),
      h("td", {}, plugin.pending), h("td", {}, plugin.lag === null ? "-" : plugin.lag),
      h("td", {}), h("td", {}), h("td", {}), h("td", {}), h("td", {})));
    for (const consumer of plugin.consumers) {
      rows.push(h("tr", { className: "consumer", dataset: { consumer: consumer.name } },
        h("td", {}, consumer.name), h("td", {}), h("td", {}), h("td", {}, yes(consumer.alive)),
        h("td", {}, consumer.pending), h("td", {}), h("td", {}, consumer.handled),
        h("td", { className: consumer.hook_errors ? "bad" : "" }, consumer.hook_errors),
        h("td", { className: consumer.failures ? "bad" : "" }, consumer.failures),
        h("td", {}, millis(consumer.last_duration)),
        h("td", {}, consumer.host ? `${consumer.host} (${consumer.pid})` : "-")));
    }
  }
  fill($("#plugins"), rows, "No plugin has announced itself.");

  fill($("#failures"), status.recent_failures.map((failure) =>
    h("tr", {},
      h("td", {}, clock(failure.time)), h("td", {}, failure.plugin),
      h("td", {}, failure.consumer || "-"), h("td", { className: "bad" }, failure.kind),
      h("td", {}, failure.type), h("td", {}, failure.app || "-"),
      h("td", { className: "error text" }, failure.error))), "No failure recorded.");

  const plugins = status.plugins.map((plugin) => plugin.name);
  const select = $("#replay-form select[name=plugin]");
  if (select.dataset.known !== plugins.join(",")) {
    const chosen = select.value;
    select.replaceChildren(...plugins.map((name) => h("option", { value: name }, name)));
    if (plugins.includes(chosen)) select.value = chosen;
    select.dataset.known = plugins.join(",");
  }
  if (status.dead_letters !== state.lettersSeen) loadLetters();
  const apps = JSON.stringify(status.registries.map((registry) => registry.info.apps));
  if (apps !== state.appsSeen) {
    state.appsSeen = apps;
    loadApps();
  }
}

async function loadApps() {
  const apps = await getJSON("/api/apps");
  fill($("#apps"), apps.map((app) => h("tr", { dataset: { app: app.app } },
    h("td", {}, app.app), h("td", {}, app.owner), h("td", {}, yes(app.owner_alive)),
    h("td", {}, app.host || "-"))), "No app is registered.");
}

// --- the live feed of events and outcomes --------------------------------------------

function eventCells(event) {
  const details = [event.provenance, event.summary].filter(Boolean).join(" ");
  return [
    h("td", {}, clock(event.time)), h("td", {}, event.type), h("td", {}, event.app || "-"),
    h("td", {}, event.registry), h("td", { className: "id", title: event.entry_id }, event.id),
    h("td", { className: "text" }, details)];
}

function chip(plugin, outcome) {
  if (!outcome) return h("span", { className: "chip awaited", dataset: { plugin } }, plugin);
  const took = outcome.duration ? ` ${millis(outcome.duration)}` : "";
  const text = `${plugin} ${outcome.status}${took}`;
  return h("span", {
    className: `chip ${outcome.status}`, dataset: { plugin, status: outcome.status },
    title: [outcome.consumer, outcome.attempt > 1 ? `attempt ${outcome.attempt}` : "",
      outcome.error || ""].filter(Boolean).join(" · "),
  }, text);
}

function addEvent(event) {
  // A page that reconnects receives the last events again.
  if (document.querySelector(`#feed tr[data-entry="${CSS.escape(event.entry_id)}"]`)) return;
  $("#feed-empty").hidden = true;
  const outcomes = h("td", { className: "outcomes" },
    (event.target ? [event.target] : event.required || []).map((plugin) => chip(plugin)));
  // Only what arrives once the page is live flashes, not the last events sent first.
  const row = h("tr", {
    className: state.live ? "fresh" : "", dataset: { entry: event.entry_id, event: event.id },
  }, ...eventCells(event), outcomes);
  const body = $("#feed").tBodies[0];
  body.prepend(row);
  while (body.rows.length > FEED_ROWS) body.lastElementChild.remove();
  setTimeout(() => row.classList.remove("fresh"), 1500);
}

function addOutcome(outcome) {
  const row = document.querySelector(`#feed tr[data-entry="${CSS.escape(outcome.entry_id)}"]`);
  if (!row) return;
  const cell = row.querySelector(".outcomes");
  const old = cell.querySelector(`[data-plugin="${CSS.escape(outcome.plugin)}"]`);
  const fresh = chip(outcome.plugin, outcome);
  if (old) old.replaceWith(fresh);
  else cell.append(fresh);
}

function connect() {
  const source = new EventSource("/api/stream");
  const live = $("#live");
  source.onopen = () => { live.textContent = "live"; live.className = "pill on"; };
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "pill off";
    state.live = false;
  };
  source.addEventListener("live", () => { state.live = true; });
  source.addEventListener("status", (message) => renderStatus(JSON.parse(message.data)));
  source.addEventListener("event", (message) => addEvent(JSON.parse(message.data)));
  source.addEventListener("outcome", (message) => addOutcome(JSON.parse(message.data)));
  source.addEventListener("bus_error", (message) => {
    live.textContent = "bus unavailable";
    live.className = "pill off";
    live.title = JSON.parse(message.data).error;
  });
}

// --- dead letters and re-drive -------------------------------------------------------

async function loadLetters() {
  const letters = await getJSON("/api/dead-letters?count=200");
  state.lettersSeen = state.status ? state.status.dead_letters : null;
  fill($("#dead-letters"), letters.map((letter) => h("tr", { dataset: { letter: letter.id } },
    h("td", { className: "id" }, letter.id), h("td", {}, when(letter.last_time)),
    h("td", {}, letter.plugin), h("td", {}, letter.consumer),
    h("td", {}, letter.type || "(undecodable)"), h("td", {}, letter.app || "-"),
    h("td", {}, letter.attempts), h("td", { className: "error text" }, letter.last_error),
    h("td", {}, h("button", {
      type: "button", className: "redrive", disabled: !state.config.actions,
      title: state.config.actions ? "re-drive to its plugin (asks to confirm)"
        : "read-only: start the dashboard with --allow-actions",
      onclick: (click) => redrive(letter, click.currentTarget),
    }, "Redrive")))), "No dead letter.");
}

async function redrive(letter, button) {
  let plan;
  try {
    plan = await act("/api/actions/redrive", { id: letter.id });
  } catch (error) {
    refused(error);
    return;
  }
  const cell = button.parentElement;
  cell.replaceChildren(
    h("button", { type: "button", className: "confirm", onclick: async () => {
      try {
        const done = await act("/api/actions/redrive", { id: letter.id, confirm: plan.confirm });
        say(`re-drove ${done.letter_id} to plugin ${done.plugin} as event ${done.event_id}`,
          "good");
        loadLetters();
      } catch (error) {
        refused(error);
      }
    } }, `Confirm: redrive to ${plan.letter.plugin}`),
    h("button", { type: "button", onclick: () => loadLetters() }, "Cancel"));
}

// --- history search and replay -------------------------------------------------------

function query(form) {
  const data = new FormData(form);
  const params = new URLSearchParams();
  for (const [name, value] of data) if (value !== "" && name !== "plugin") params.append(name, value);
  return params;
}

async function search(submit) {
  submit.preventDefault();
  try {
    const page = await getJSON(`/api/history?${query($("#history-form"))}`);
    fill($("#history"), page.events.map((event) => {
      const latest = new Map(event.outcomes.map((outcome) => [outcome.plugin, outcome]));
      return h("tr", { dataset: { entry: event.entry_id, event: event.id } }, ...eventCells(event),
        h("td", { className: "outcomes" },
          [...latest.values()].map((outcome) => chip(outcome.plugin, outcome))));
    }), "No event matches.");
    $("#history-more").textContent = page.more ? "More events match: narrow the search." : "";
  } catch (error) {
    say(error.message, "bad");
  }
}

async function replay(submit) {
  submit.preventDefault();
  const form = $("#replay-form");
  const data = new FormData(form);
  const selection = {};
  for (const name of ["since", "until", "app"]) if (data.get(name)) selection[name] = data.get(name);
  if (data.get("type")) selection.types = [data.get("type")];
  if (data.get("limit")) selection.limit = Number(data.get("limit"));
  const plugin = data.get("plugin");
  const result = $("#replay-result");
  let plan;
  try {
    plan = await act("/api/actions/replay", { plugin, selection });
  } catch (error) {
    refused(error);
    result.replaceChildren();
    return;
  }
  const noun = plan.count === 1 ? "event" : "events";
  const table = h("table", {},
    h("thead", {}, h("tr", {}, ...["time", "type", "app", "registry", "event", "details"]
      .map((name) => h("th", {}, name)))),
    h("tbody", {}, plan.events.map((event) =>
      h("tr", { dataset: { entry: event.entry_id, event: event.id } }, ...eventCells(event)))));
  result.replaceChildren(
    h("p", {}, `Dry run: would re-deliver ${plan.count} ${noun} to plugin ${plan.plugin}` +
      (plan.skipped ? ` (${plan.skipped} copies skipped)` : "") +
      (plan.live_workers ? "" : "; it has no live worker now: they would wait for one")),
    table,
    plan.count ? h("button", { type: "button", className: "confirm", onclick: async () => {
      try {
        const done = await act("/api/actions/replay",
          { plugin, selection: plan.selection, confirm: plan.confirm });
        result.replaceChildren(h("p", { className: "good" },
          `Re-delivered ${done.count} ${noun} to plugin ${done.plugin}`));
      } catch (error) {
        refused(error);
      }
    } }, `Confirm: re-deliver ${plan.count} ${noun} to ${plan.plugin}`) : null);
}

// --- start ---------------------------------------------------------------------------

async function start() {
  state.config = await getJSON("/api/config");
  const config = state.config;
  $("#namespace").textContent = config.namespace;
  $("#bus-url").textContent = config.url;
  const mode = $("#mode");
  mode.textContent = config.actions ? "actions on" : "read-only";
  mode.className = `pill ${config.actions ? "warn" : ""}`;
  $("#actions-note").textContent = config.actions
    ? "Actions need the token printed when the dashboard started."
    : "Read-only: start the dashboard with --allow-actions to re-drive or replay.";
  for (const select of document.querySelectorAll("select[name=type]")) {
    select.append(...config.event_types.map((type) => h("option", { value: type }, type)));
  }
  $("#history-form select[name=status]").append(
    ...config.statuses.map((status) => h("option", { value: status }, status)));
  const tokenForm = $("#token-form");
  tokenForm.hidden = !config.actions;
  state.token = sessionStorage.getItem("rapid-objection-token") || "";
  $("#token").value = state.token;
  tokenForm.addEventListener("submit", (submit) => {
    submit.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("rapid-objection-token", state.token);
    say(state.token ? "token set for this tab" : "token cleared", "good");
  });
  $("#replay-section").hidden = !config.actions;
  $("#history-form").addEventListener("submit", search);
  $("#replay-form").addEventListener("submit", replay);
  connect();
  $("#history-form").requestSubmit();
}

start().catch((error) => say(`cannot start: ${error.message}`, "bad"));
