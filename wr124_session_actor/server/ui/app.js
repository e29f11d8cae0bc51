// wr124 sessions: a read-only view of the json-documents API (no build step, no dependencies).
"use strict";

const KEY_STORAGE = "wr124.apiKey";
const PAGE = 20;              // sessions per page
const STATES_PAGE = 200;      // states loaded at once when a session opens (and per "Load older")
const STATES_POLL_LIMIT = 1000;  // new states fetched per poll at most (the server's max limit)
const POLL_SESSION_MS = 700;  // the open session is refreshed this often
const POLL_LIST_MS = 2500;    // and the session list this often

const $ = (id) => document.getElementById(id);
const view = {
  project: new URLSearchParams(location.search).get("project") || localStorage.getItem("wr124.project") || "default",
  search: "",
  skip: 0,
  total: 0,
  sessions: [],
  session: null,     // the open session id
  docs: [],          // its states, oldest first: the newest ``window`` of them
  window: STATES_PAGE,  // how many states are kept in view (grows with "Load older")
  stateTotal: 0,     // how many states it has
  loading: false,    // the first load of the open session is on its way
  known: new Set(),  // ids already shown (new ones get a short highlight)
  selected: null,    // the selected state's id
  base: null,        // the id compared against (null: the previous state of the same agent)
};

// ------------------------------------------------------------------------------------------------
// DOM helpers: every value from the server goes in as text, never as HTML.

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function formatBytes(n) {
  if (typeof n !== "number") return "?";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function ago(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

// ------------------------------------------------------------------------------------------------
// The API (with the key, when the server wants one)

let keyPrompt = null;

function askKey(why) {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key").value = "";
      $("key-why").textContent = why || "";
      dialog.addEventListener("close", function done() {
        dialog.removeEventListener("close", done);
        sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
        keyPrompt = null;
        resolve();
      });
      dialog.showModal();
      $("key").focus();
    });
  }
  return keyPrompt;
}

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") url.searchParams.append(name, item);
    }
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key && !/^[\x20-\x7e]*$/.test(key)) {
      // A header holds Latin-1 only: fetch would throw at every call, with the key kept for the tab. No
      // server key can be such a key: ask again.
      sessionStorage.removeItem(KEY_STORAGE);
      await askKey("A key is made of ASCII letters, digits and signs.");
      continue;
    }
    const response = await fetch(url, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
    if (response.status === 401) {
      await askKey(key ? "That key was refused: the server's is another one." : "");
      continue;
    }
    const body = parseJson(await response.text());
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }
  throw new Error("the key was refused");
}

// An integer past 2**53 is a BigInt read from its own digits (a number would show it rounded:
// 18446744073709551615 as 18446744073709552000), where the browser gives the reviver the source text.
// Only a text with 16 digits in a row can hold one: the reviver, on every value, made a 1 MB answer
// 20 times slower to parse.
function parseJson(text) {
  try {
    if (!/[0-9]{16}/.test(text)) return JSON.parse(text);
    return JSON.parse(text, (key, value, context) => (
      typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?[0-9]+$/.test(context.source)
        ? BigInt(context.source) : value));
  } catch {
    return {};
  }
}

const projectPath = (suffix) => `/${encodeURIComponent(view.project)}${suffix}`;

function setLive(ok, message) {
  const live = $("live");
  const text = ok ? "● live" : "● offline";
  if (live.textContent !== text) live.textContent = text;  // announced only when it changes
  live.classList.toggle("off", !ok);
  live.title = ok ? "Refreshed every second" : message;
}

// ------------------------------------------------------------------------------------------------
// Sessions

let sessionsAsked = 0;  // the latest list request: an older one answering later is dropped

async function loadSessions() {
  const asked = ++sessionsAsked;
  const page = await api(projectPath("/sessions"), { search: view.search, limit: PAGE, skip: view.skip });
  if (asked !== sessionsAsked) return;  // another page, search or project was asked for meanwhile
  if (!page.data.length && view.skip > 0 && page.total > 0) {
    // The page's sessions were deleted (or pruned): go back to the last page that has some.
    view.skip = Math.floor((page.total - 1) / PAGE) * PAGE;
    return loadSessions();
  }
  view.sessions = page.data;
  view.total = page.total;
  renderSessions();
}

function renderSessions() {
  const list = $("sessions");
  const focused = document.activeElement && document.activeElement.dataset.session;
  list.replaceChildren(...view.sessions.map((s) => h("li", {},
    h("button", {
      type: "button", "data-session": s.session_id, "aria-current": s.session_id === view.session ? "true" : null,
      onclick: () => openSession(s.session_id),
    },
    h("span", { class: "session-id" }, s.session_id),
    h("span", { class: "session-sub" }, `${s.documents} document${s.documents === 1 ? "" : "s"} · ${ago(s.last_at)}`),
    (s.agents || []).length ? h("span", { class: "session-agents" }, s.agents.join(" · ")) : null,
    ))));
  if (!view.sessions.length) list.append(h("li", { class: "muted", style: "padding:10px" },
    view.search ? "No session matches." : `No sessions in project “${view.project}”.`));
  if (focused) {
    const again = list.querySelector(`[data-session="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  const first = view.total ? view.skip + 1 : 0;
  $("page-info").textContent = `${first}–${view.skip + view.sessions.length} of ${view.total}`;
  $("prev").disabled = view.skip === 0;
  $("next").disabled = view.skip + PAGE >= view.total;
}

// ------------------------------------------------------------------------------------------------
// One session: its states by agent

const agentOf = (doc) => (doc.content && doc.content.agent_name) || (doc.tags || [])[2] || "?";
const orderOf = (a, b) =>
  (typeof a.seq === "number" && typeof b.seq === "number") ? a.seq - b.seq
    : (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0);
const labelOf = (doc) => (typeof doc.seq === "number" ? `${doc.seq}` : `#${view.docs.indexOf(doc) + 1}`);

async function openSession(sessionId, docId) {
  if (view.session !== sessionId) {
    view.session = sessionId;
    view.docs = [];
    view.window = STATES_PAGE;
    view.stateTotal = 0;
    view.known = new Set();
    view.selected = docId || null;
    view.base = null;
  }
  document.body.classList.add("viewing");
  $("empty").hidden = true;
  $("detail").hidden = false;
  $("session-title").textContent = sessionId;
  renderSessions();
  writeHash();
  await loadStates(true);
}

// The first load takes the newest STATES_PAGE states; polls then ask only for what came after the newest
// one seen (created_at order agrees with seq within a session), so a big session costs little to follow.
async function loadStates(first) {
  if (!first && view.loading) return;  // the first load of this session is still on its way
  view.loading = first ? true : view.loading;
  try {
    await fetchStates(first);
  } finally {
    if (first) view.loading = false;
  }
}

async function fetchStates(first) {
  const sessionId = view.session;
  const base = { session_id: sessionId, tags: "session_state", sort_by: "seq" };
  let fresh;
  if (first || !view.docs.length) {
    const page = await api(projectPath("/json-documents"), { ...base, sort_order: "-1", limit: STATES_PAGE });
    if (sessionId !== view.session) return;
    view.stateTotal = page.total;
    fresh = page.data;
    if (!first && !fresh.length) return;
  } else {
    const newest = view.docs[view.docs.length - 1];
    const [page, count] = await Promise.all([
      api(projectPath("/json-documents"), {
        ...base, sort_order: "1", created_after: newest.created_at, limit: STATES_POLL_LIMIT,
      }),
      api(projectPath("/json-documents"), { ...base, limit: 0 }),  // how many there are now
    ]);
    if (sessionId !== view.session) return;
    // created_after is inclusive and a batch shares one created_at: only higher seqs are new.
    fresh = page.data.filter((d) => (typeof d.seq === "number" && typeof newest.seq === "number"
      ? d.seq > newest.seq : !view.docs.some((known) => known.id === d.id)));
    const expected = view.stateTotal + fresh.length;
    if (count.total < expected || fresh.length >= STATES_POLL_LIMIT) {
      // Some were deleted meanwhile (retention, a prune, a delete), or more came than one poll takes:
      // load the newest again, in place of what is shown.
      view.docs = [];
      return fetchStates(true);
    }
    // More counted than read: stored between the two requests; the next poll reads them (and highlights
    // them: reloading here showed a new state without its highlight).
    if (!fresh.length) return;
    view.stateTotal = expected;
  }
  addStates(fresh, first);
}

async function loadOlder() {
  // view.docs holds the newest states, contiguous: the next older page starts after them.
  const sessionId = view.session;
  const page = await api(projectPath("/json-documents"), {
    session_id: sessionId, tags: "session_state", sort_by: "seq", sort_order: "-1",
    skip: view.docs.length, limit: STATES_PAGE,
  });
  if (sessionId !== view.session) return;
  view.window = view.docs.length + STATES_PAGE;
  addStates(page.data.filter((d) => !view.docs.some((known) => known.id === d.id)), true);
}

function addStates(fresh, quiet) {
  // Keyed by id: a poll and the first load may bring the same states.
  const byId = new Map(view.docs.map((d) => [d.id, d]));
  for (const doc of fresh) byId.set(doc.id, doc);
  let docs = [...byId.values()].sort(orderOf);
  // A followed session keeps its newest ``window`` states (and the selected and compared ones, with those
  // after them): it kept every state that came, and redrew thousands of chips at every poll.
  const oldestKept = Math.min(docs.length - view.window,
    ...[view.selected, view.base].map((id) => docs.findIndex((d) => d.id === id)).filter((i) => i >= 0));
  if (oldestKept > 0) {
    docs = docs.slice(oldestKept);
    const kept = new Set(docs.map((d) => d.id));
    view.known = new Set([...view.known].filter((id) => kept.has(id)));
  }
  view.docs = docs;
  const agents = new Set(docs.map(agentOf));
  const total = view.stateTotal;
  const shown = total > docs.length ? ` · newest ${docs.length} shown ` : "";
  const meta = [`${total} state${total === 1 ? "" : "s"} · ${agents.size} agent${agents.size === 1 ? "" : "s"}${shown}`];
  if (total > docs.length) {
    meta.push(h("button", { type: "button", class: "small-button", onclick: () => loadOlder().catch(showError) },
      "Load older"));
  }
  $("session-meta").replaceChildren(...meta);
  if (!view.selected || !docs.some((d) => d.id === view.selected)) {
    view.selected = docs.length ? docs[docs.length - 1].id : null;
  }
  renderTimeline(quiet);
  renderSelection();
}

function statesOfAgent(agent) {
  return view.docs.filter((d) => agentOf(d) === agent);
}

function previousOf(doc) {
  const lane = statesOfAgent(agentOf(doc));
  const index = lane.indexOf(doc);
  return index > 0 ? lane[index - 1] : null;
}

function baseOf(doc) {
  if (!doc) return null;
  if (view.base) return view.docs.find((d) => d.id === view.base) || null;
  return previousOf(doc);
}

function renderTimeline(first) {
  const focusedId = document.activeElement && document.activeElement.dataset.doc;
  const lanes = new Map();
  for (const doc of view.docs) {
    const agent = agentOf(doc);
    if (!lanes.has(agent)) lanes.set(agent, []);
    lanes.get(agent).push(doc);
  }
  const timeline = $("timeline");
  timeline.replaceChildren(...[...lanes].map(([agent, docs]) => h("div", { class: "lane", role: "group", "aria-label": agent },
    h("div", { class: "lane-name" }, agent, h("small", {}, `${docs.length} state${docs.length === 1 ? "" : "s"}`)),
    h("div", { class: "chips" }, docs.map((doc) => h("button", {
      type: "button",
      class: "chip" + (!first && !view.known.has(doc.id) ? " new" : ""),
      "data-doc": doc.id,
      "data-agent": agent,
      "aria-pressed": doc.id === view.selected ? "true" : "false",
      title: `${agent} · ${formatTime(doc.created_at)} · ${(doc.content && doc.content.task) || ""}`,
      onclick: () => select(doc.id),
      onkeydown: (event) => stepWithArrows(event, docs, doc),
    }, labelOf(doc)))),
  )));
  if (!view.docs.length) timeline.append(h("p", { class: "muted" }, "No states yet."));
  for (const doc of view.docs) view.known.add(doc.id);
  if (focusedId) {
    const again = timeline.querySelector(`[data-doc="${CSS.escape(focusedId)}"]`);
    if (again) again.focus();
  }
}

function stepWithArrows(event, lane, doc) {
  const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
  if (!step) return;
  const next = lane[lane.indexOf(doc) + step];
  if (!next) return;
  event.preventDefault();
  select(next.id);
  const chip = $("timeline").querySelector(`[data-doc="${CSS.escape(next.id)}"]`);
  if (chip) chip.focus();
}

function select(docId) {
  view.selected = docId;
  view.base = null;
  for (const chip of $("timeline").querySelectorAll(".chip")) {
    chip.setAttribute("aria-pressed", chip.dataset.doc === docId ? "true" : "false");
  }
  writeHash();
  renderSelection();
}

function renderSelection() {
  const doc = view.docs.find((d) => d.id === view.selected);
  const base = baseOf(doc);
  for (const chip of $("timeline").querySelectorAll(".chip")) {
    chip.classList.toggle("base", !!base && chip.dataset.doc === base.id);
  }
  renderState(doc);
  renderDiff(doc, base);
}

function renderState(doc) {
  const card = $("state");
  if (!doc) {
    card.replaceChildren(h("p", { class: "muted" }, "No state selected."));
    return;
  }
  const content = doc.content || {};
  const size = (doc.metadata || {}).state_size;
  card.replaceChildren(
    h("h3", {}, `State ${labelOf(doc)} of ${agentOf(doc)}`),
    h("dl", { class: "facts" },
      h("dt", {}, "agent"), h("dd", { "data-fact": "agent" }, agentOf(doc)),
      h("dt", {}, "task"), h("dd", { "data-fact": "task" }, content.task || ""),
      h("dt", {}, typeof doc.seq === "number" ? "seq" : "order"), h("dd", { "data-fact": "seq" }, labelOf(doc)),
      h("dt", {}, "time"), h("dd", { "data-fact": "time" }, formatTime(doc.created_at)),
      h("dt", {}, "size"), h("dd", { "data-fact": "size" }, formatBytes(size)),
      h("dt", {}, "id"), h("dd", {}, h("code", {}, doc.id)),
    ),
    h("ul", { class: "json", "aria-label": "state" }, jsonEntries(content.state, 0)),
    h("details", { class: "whole" }, h("summary", {}, "Whole document"),
      h("ul", { class: "json" }, jsonEntries(doc, 1))),
  );
}

// ------------------------------------------------------------------------------------------------
// Collapsible JSON (children are built when first opened, so big states stay fast)

function scalar(value) {
  if (value === null) return h("span", { class: "z" }, "null");
  switch (typeof value) {
    case "string": return h("span", { class: "s text" }, JSON.stringify(value));
    case "number": case "bigint": return h("span", { class: "n" }, String(value));
    case "boolean": return h("span", { class: "b" }, String(value));
    default: return h("span", {}, String(value));
  }
}

const isContainer = (v) => v !== null && typeof v === "object";
const entriesOf = (v) => (Array.isArray(v) ? v.map((x, i) => [String(i), x]) : Object.entries(v));
const countOf = (v) => (Array.isArray(v) ? `[${v.length}]` : `{${Object.keys(v).length}}`);
const OPEN_UP_TO = 12;  // containers with more entries start folded

// A short hint of what an object holds: its first few short string values.
function previewOf(value) {
  if (!isContainer(value) || Array.isArray(value)) return "";
  const words = Object.values(value).filter((v) => typeof v === "string" && v.length).slice(0, 2).join(" · ");
  return words.length > 70 ? words.slice(0, 69) + "…" : words;
}

function folded(key, value) {
  const preview = previewOf(value);
  return h("summary", {}, h("span", { class: "k" }, key), " ", h("span", { class: "count" }, countOf(value)),
    preview ? h("span", { class: "preview" }, " ", preview) : null);
}

function jsonEntries(value, depth) {
  if (!isContainer(value)) return [h("li", {}, scalar(value))];
  return entriesOf(value).map(([key, child]) => jsonNode(key, child, depth));
}

function jsonNode(key, value, depth) {
  if (!isContainer(value)) {
    return h("li", { "data-key": key }, h("span", { class: "row" }, h("span", { class: "k" }, key), ": ", scalar(value)));
  }
  return h("li", { "data-key": key }, foldable(key, value, depth));
}

function foldable(key, value, depth) {
  const list = h("ul");
  const details = h("details", {}, folded(key, value), list);
  let filled = false;
  const fill = () => {
    if (!filled) { filled = true; list.append(...jsonEntries(value, depth + 1)); }
  };
  details.addEventListener("toggle", fill);
  if (depth < 1 && entriesOf(value).length <= OPEN_UP_TO) { details.open = true; fill(); }
  return details;
}

// ------------------------------------------------------------------------------------------------
// Diff of two states: changed keys highlighted, unchanged ones folded

function equal(a, b) {
  if (a === b) return true;
  if (!isContainer(a) || !isContainer(b) || Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && equal(a[k], b[k]));
}

function diffEntries(a, b, tally) {
  const keys = [];
  const seen = new Set();
  for (const [k] of [...entriesOf(b), ...entriesOf(a)]) if (!seen.has(k)) { seen.add(k); keys.push(k); }
  const has = (v, k) => Object.prototype.hasOwnProperty.call(v, k);
  const same = [];
  const items = [];
  for (const key of keys) {
    if (!has(a, key)) { tally.added++; items.push(diffLeaf(key, "added", undefined, b[key])); }
    else if (!has(b, key)) { tally.removed++; items.push(diffLeaf(key, "removed", a[key], undefined)); }
    else if (equal(a[key], b[key])) same.push(key);
    else if (isContainer(a[key]) && isContainer(b[key]) && Array.isArray(a[key]) === Array.isArray(b[key])) {
      tally.changed++;
      const inner = { added: 0, removed: 0, changed: 0 };
      const children = diffEntries(a[key], b[key], inner);
      items.push(h("li", { class: "changed", "data-key": key, "data-diff": "changed" },
        h("details", { open: true },
          h("summary", {}, h("span", { class: "k" }, key), " ",
            h("span", { class: "count" }, `${countOf(a[key])} → ${countOf(b[key])}`)),
          h("ul", {}, children))));
    } else {
      tally.changed++;
      items.push(diffLeaf(key, "changed", a[key], b[key]));
    }
  }
  if (same.length) {
    items.push(h("li", { class: "same" }, `${same.length} unchanged: ${same.slice(0, 8).join(", ")}` +
      (same.length > 8 ? ", …" : "")));
  }
  return items;
}

function diffLeaf(key, kind, before, after) {
  if (kind !== "changed") {
    const value = kind === "added" ? after : before;
    if (isContainer(value)) return h("li", { class: kind, "data-key": key, "data-diff": kind }, foldable(key, value, 1));
  }
  const show = (value) => (isContainer(value) ? h("span", { class: "count" }, countOf(value)) : scalar(value));
  const row = h("span", { class: "row" }, h("span", { class: "k" }, key), ": ",
    kind !== "added" ? h("span", { class: "old" }, show(before)) : null,
    kind !== "removed" ? h("span", { class: "new-value" }, show(after)) : null);
  return h("li", { class: kind, "data-key": key, "data-diff": kind }, row);
}

function renderDiff(doc, base) {
  const card = $("diff");
  if (!doc) { card.replaceChildren(); return; }
  const lane = statesOfAgent(agentOf(doc)).filter((d) => d.id !== doc.id);
  const select = h("select", {
    id: "compare", "aria-label": "Compare with",
    onchange: (event) => { view.base = event.target.value || null; renderSelection(); },
  },
  h("option", { value: "" }, previousOf(doc) ? `the previous state (${labelOf(previousOf(doc))})` : "the previous state"),
  lane.slice().reverse().map((d) => h("option", { value: d.id, selected: view.base === d.id },
    `${labelOf(d)} · ${formatTime(d.created_at)}`)));
  const header = [
    h("h3", {}, base ? `Changes: ${labelOf(base)} → ${labelOf(doc)}` : "Changes"),
    h("div", { class: "compare" }, h("label", { for: "compare" }, "Compare with"), select),
  ];
  if (!base) {
    card.replaceChildren(...header, h("p", { class: "muted" }, `The first state of ${agentOf(doc)}: nothing before it.`));
    return;
  }
  const tally = { added: 0, removed: 0, changed: 0 };
  const before = (base.content || {}).state;
  const after = (doc.content || {}).state;
  let body;
  if (isContainer(before) && isContainer(after)) body = diffEntries(before, after, tally);
  else if (equal(before, after)) body = [];
  else { tally.changed++; body = [diffLeaf("state", "changed", before, after)]; }
  const summary = equal(before, after) ? "No change in the state."
    : `${tally.changed} changed · ${tally.added} added · ${tally.removed} removed`;
  card.replaceChildren(...header, h("p", { class: "diff-summary", role: "status" }, summary),
    h("ul", { class: "json" }, body));
}

// ------------------------------------------------------------------------------------------------
// Navigation, polling, keys

function writeHash() {
  const params = new URLSearchParams();
  if (view.session) params.set("s", view.session);
  if (view.selected) params.set("d", view.selected);
  history.replaceState(null, "", `${location.pathname}?project=${encodeURIComponent(view.project)}#${params}`);
}

function closeSession() {
  view.session = null;
  document.body.classList.remove("viewing");
  $("detail").hidden = true;
  $("empty").hidden = false;
  writeHash();
  renderSessions();
  const first = $("sessions").querySelector("button");
  if (first) first.focus();
}

// ``task`` returns false when it asked the server nothing (then it says nothing of whether the server is up).
function poll(task, every) {
  const run = async () => {
    try {
      if (await task() !== false) setLive(true);
    } catch (error) {
      setLive(false, String(error.message || error));
    }
    setTimeout(run, every);
  };
  setTimeout(run, every);
}

function showError(error) {
  setLive(false, String(error.message || error));
  $("sessions").replaceChildren(h("li", { class: "error" }, String(error.message || error)));
}

let searchTimer = null;

function start() {
  $("project").value = view.project;
  $("project-form").addEventListener("submit", (event) => {
    event.preventDefault();
    view.project = $("project").value.trim() || "default";
    localStorage.setItem("wr124.project", view.project);
    view.skip = 0;
    closeSession();
    loadSessions().catch(showError);
  });
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      view.search = $("search").value.trim();
      view.skip = 0;
      loadSessions().catch(showError);
    }, 200);
  });
  $("prev").addEventListener("click", () => { view.skip = Math.max(0, view.skip - PAGE); loadSessions().catch(showError); });
  $("next").addEventListener("click", () => { view.skip += PAGE; loadSessions().catch(showError); });
  $("back").addEventListener("click", closeSession);
  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (event.key === "/" && !typing) { event.preventDefault(); $("search").focus(); }
    if (event.key === "Escape" && view.session && !typing && !$("key-dialog").open) closeSession();
  });

  const hash = new URLSearchParams(location.hash.slice(1));
  loadSessions().catch(showError);
  if (hash.get("s")) openSession(hash.get("s"), hash.get("d")).catch(showError);
  poll(() => loadSessions(), POLL_LIST_MS);
  poll(() => (view.session ? loadStates(false) : Promise.resolve(false)), POLL_SESSION_MS);
}

start();
