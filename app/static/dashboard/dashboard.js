// The pool dashboard: reads the tenant's pools and a pool's events from the API, every few seconds.
// The API key comes from the URL fragment (#key=..., never sent to the server) or the form, and is kept in
// sessionStorage. Every value from the API is written as text, never as HTML.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const KEY = "warmpool.key";
  const PHASE_ORDER = ["detect", "lock", "fence_old_primary", "start_standby", "promote", "replace_standby"];
  // an event's colour: trouble, a failover, something made or mended, or neutral (the first pattern that matches)
  const TONES = [[/failed|degraded|split_brain|orphan|incomplete|given_up|cancelled|deferred/, "bad"],
    [/^failover/, "failover"], [/created|replaced|healed|enabled|rebuilt|fresh|cleaned|destroyed/, "good"]];
  const $ = (selector) => document.querySelector(selector);

  let selected = null; // the machine whose events are shown
  let timer = null;

  class Unauthorized extends Error {}

  // an element with attributes and children (strings become text nodes)
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get("key")) sessionStorage.setItem(KEY, params.get("key"));
    params.delete("key");
    if (params.get("pool")) selected = Number(params.get("pool")) || null;
    writeFragment(params);
  }

  // the fragment keeps the selected pool; the key leaves the address bar and the history at once
  function writeFragment(params = new URLSearchParams()) {
    if (selected) params.set("pool", selected);
    else params.delete("pool");
    const fragment = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (fragment ? "#" + fragment : ""));
  }

  async function api(path) {
    const key = sessionStorage.getItem(KEY);
    if (!key) throw new Unauthorized("no key");
    const response = await fetch(path, {headers: {Authorization: "Bearer " + key}, cache: "no-store"});
    if (response.status === 401) throw new Unauthorized("The API refused this key");
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw Object.assign(new Error(body.message || "HTTP " + response.status), {status: response.status});
    return body;
  }

  function time(iso) {
    if (!iso) return "—";
    const at = new Date(iso);
    const today = at.toDateString() === new Date().toDateString();
    return today ? at.toLocaleTimeString() : at.toLocaleString();
  }

  function tone(kind) {
    const match = TONES.find(([pattern]) => pattern.test(kind));
    return match ? match[1] : "neutral";
  }

  function seconds(value) {
    return value < 10 ? value.toFixed(2) + " s" : value.toFixed(1) + " s";
  }

  function orderedPhases(phases) {
    const names = Object.keys(phases);
    return [...PHASE_ORDER.filter((name) => names.includes(name)), ...names.filter((n) => !PHASE_ORDER.includes(n))];
  }

  // a failover's phases as one bar, each phase's width its share of `scale` seconds
  function phaseBar(phases, scale, withLegend) {
    const names = orderedPhases(phases);
    const total = names.reduce((sum, name) => sum + phases[name], 0);
    const bar = el("div", {class: "phases", role: "img",
      "aria-label": names.map((name) => `${name} ${seconds(phases[name])}`).join(", ")});
    const track = el("div", {class: "track"});
    track.style.width = Math.max(2, (100 * total) / (scale || total || 1)) + "%";
    for (const name of names) {
      const part = el("span", {class: "phase phase-" + name, title: `${name}: ${seconds(phases[name])}`,
        dataset: {phase: name}});
      // shares out of 100: flex factors that sum below 1 would leave part of the track empty
      part.style.flexGrow = String((100 * Math.max(phases[name], 0.0001)) / (total || 1));
      track.append(part);
    }
    bar.append(track);
    if (withLegend) {
      bar.append(el("div", {class: "legend"}, names.map((name) =>
        el("span", {class: "legend-item"}, el("i", {class: "swatch phase-" + name}), `${name} ${seconds(phases[name])}`))));
    }
    return bar;
  }

  function lastFailover(pool) {
    const last = pool.last_failover;
    if (!last) return "—";
    return el("div", {class: "last-failover"},
      el("span", {}, `${time(last.at)} · ${seconds(last.recovery_time_seconds)} (${last.trigger})`),
      last.phases ? phaseBar(last.phases, last.recovery_time_seconds, false) : null);
  }

  function standby(pool) {
    if (pool.standby_gpu_id === null || pool.standby_gpu_id === undefined) return "—";
    return el("span", {}, String(pool.standby_gpu_id), " ", el("span", {class: "muted"}, pool.standby_state));
  }

  function dollars(cost) {
    if (!cost) return "—";
    return "$" + cost.total.toFixed(3) + (cost.complete ? "" : "+");
  }

  function costParts(cost) {
    if (!cost) return "";
    const part = (value) => (value === null ? "price not seen yet" : "$" + value.toFixed(4));
    return `primary ${part(cost.primary)}, standby storage ${part(cost.standby_storage)}, ` +
      `volume ${part(cost.volume)}, replica ${part(cost.replica)} per hour`;
  }

  function renderPools(pools, total) {
    const counts = {};
    for (const pool of pools) counts[pool.state] = (counts[pool.state] || 0) + 1;
    $("#summary").replaceChildren(...Object.entries(counts).sort().map(([state, n]) =>
      el("span", {class: "chip state-" + state}, `${n} ${state}`)));
    $("#pool-count").textContent = `(${pools.length}` +
      (typeof total === "number" ? `, $${total.toFixed(3)}/h in all)` : ")");
    $("#no-pools").hidden = pools.length > 0;
    $("#pools tbody").replaceChildren(...pools.map((pool) => {
      const row = el("tr", {dataset: {machine: pool.machine_id, state: pool.state},
          class: pool.machine_id === selected ? "selected" : ""},
        el("td", {}, el("button", {type: "button", class: "machine"}, String(pool.machine_id))),
        el("td", {}, el("span", {class: "state state-" + pool.state}, pool.state)),
        el("td", {}, pool.host_machine_id ?? "—"),
        el("td", {}, pool.primary_gpu_id ?? "—"),
        el("td", {}, standby(pool)),
        el("td", {class: "num"}, pool.failover_count),
        el("td", {}, lastFailover(pool)),
        el("td", {class: "num", title: costParts(pool.cost_per_hour)}, dollars(pool.cost_per_hour)),
        el("td", {class: "note"}, pool.error_message || (pool.fallback ? "fallback: " + pool.fallback : "")));
      row.addEventListener("click", () => select(pool.machine_id));
      return row;
    }));
  }

  function renderTimeline(machine, events) {
    $("#timeline-machine").textContent = String(machine);
    const failovers = events.filter((event) => event.phases);
    const scale = Math.max(0, ...failovers.map((event) => event.recovery_time_seconds || 0));
    $("#timeline").replaceChildren(...events.map((event) => el("li", {class: "event", dataset: {event: event.event}},
      el("time", {datetime: event.at}, time(event.at)),
      el("span", {class: "kind tone-" + tone(event.event)}, event.event),
      el("span", {class: "message"}, event.message),
      event.phases ? phaseBar(event.phases, scale, true) : null)));
    if (!events.length) $("#timeline").append(el("li", {class: "empty"}, "No events yet."));
  }

  function show(view) {
    document.body.dataset.view = view;
    $("#login").hidden = view !== "login";
    $("#pools-section").hidden = view !== "pools";
    $("#timeline-section").hidden = view !== "pools" || !selected;
    $("#select-hint").hidden = Boolean(selected);  // a hint while nothing is selected, then out of the way
    $("#forget").hidden = view !== "pools";
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const {pools, cost_per_hour: total} = await api("api/v1/warmpool/pools");
      if (selected && !pools.some((pool) => pool.machine_id === selected)) {
        selected = null;
        writeFragment();
      }
      renderPools(pools, total);
      if (selected) {
        const {events} = await api(`api/v1/warmpool/events/${selected}`);
        renderTimeline(selected, events);
      }
      show("pools");
      $("#updated").textContent = `updated ${new Date().toLocaleTimeString()} · every ${REFRESH_MS / 1000} s`;
      $("#updated").classList.remove("error");
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
    } catch (error) {
      if (error instanceof Unauthorized) {
        sessionStorage.removeItem(KEY);
        $("#login-error").textContent = error.message === "no key" ? "" : error.message;
        show("login");
        return; // nothing to refresh until a key is given
      }
      $("#updated").textContent = "could not refresh: " + error.message;
      $("#updated").classList.add("error");
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function select(machine) {
    selected = selected === machine ? null : machine;
    writeFragment();
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("#key").value.trim());
      $("#key").value = "";
      refresh();
    });
    $("#forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      selected = null;
      writeFragment();
      refresh();
    });
    window.addEventListener("hashchange", () => {
      readFragment();
      refresh();
    });
    readFragment();
    refresh();
  });
})();
