// Home: sort, filter, pick runs to compare, and rows kept current by the server's events.
"use strict";

(() => {
  const { text, el, pagePath, live } = lanex;
  const tables = { experiment: document.getElementById("experiments"), sweep: document.getElementById("sweeps") };
  const rows = { experiment: new Map(), sweep: new Map() };
  for (const [kind, table] of Object.entries(tables)) {
    for (const tr of table.tBodies[0].rows) rows[kind].set(tr.dataset.name, tr);
  }
  const experimentKeys = ["eta", "loss", "rate", "valAcc", "accuracy", "fp", "fn", "snapshot", "age"];
  const sweepKeys = ["trials", "running", "best", "objective", "dataset", "age"];

  function newRow(kind, row) {
    const tr = el("tr");
    tr.dataset.name = row.name;
    const link = el("a", { href: pagePath(kind === "sweep" ? "sweeps" : "experiments", row.name), textContent: row.name });
    if (kind === "experiment") {
      const box = el("input", { className: "pick" });
      box.type = "checkbox";
      box.value = row.name;
      tr.append(el("td", { className: "pick" }, [box]));
    }
    const name = el("td", {}, [link]);
    name.dataset.key = "name";
    tr.append(name);
    const phase = el("td", {}, [el("span", { className: "phase" })]);
    phase.dataset.key = "phase";
    tr.append(phase);
    if (kind === "experiment") {
      const progress = el("td", {}, [el("div", { className: "bar" }, [el("div", { className: "fill" })]),
                                      el("span", { className: "ptext" })]);
      progress.dataset.key = "progress";
      tr.append(progress);
    }
    for (const key of kind === "experiment" ? experimentKeys : sweepKeys) {
      const td = el("td");
      td.dataset.key = key;
      tr.append(td);
    }
    tables[kind].tBodies[0].append(tr);
    rows[kind].set(row.name, tr);
    return tr;
  }

  function show(kind, row) {
    const tr = rows[kind].get(row.name) || newRow(kind, row);
    tr.dataset.class = row.phaseClass;
    tr.dataset.sweep = row.sweep || "";
    const badge = tr.querySelector('[data-key="phase"] .phase');
    text(badge, row.phase);
    badge.className = `phase ${row.phaseClass}`;
    badge.title = row.message || "";
    if (kind === "experiment") {
      tr.querySelector('[data-key="progress"] .fill').style.width = `${(100 * row.fraction).toFixed(1)}%`;
      text(tr.querySelector('[data-key="progress"] .ptext'), row.progress);
    }
    for (const key of kind === "experiment" ? experimentKeys : sweepKeys) {
      text(tr.querySelector(`[data-key="${key}"]`), row[key]);
    }
    counts();
    applyFilter();
  }

  function remove(kind, name) {
    const tr = rows[kind].get(name);
    if (tr) tr.remove();
    rows[kind].delete(name);
    counts();
  }

  function counts() {
    text(document.getElementById("experiment-count"), rows.experiment.size);
    text(document.getElementById("sweep-count"), rows.sweep.size);
    document.getElementById("no-experiments").hidden = rows.experiment.size > 0;
    document.getElementById("no-sweeps").hidden = rows.sweep.size > 0;
  }

  // -- filter ----------------------------------------------------------------------------------
  const filter = document.getElementById("filter");
  const phaseFilter = document.getElementById("phase-filter");
  const hideTrials = document.getElementById("hide-trials");

  function applyFilter() {
    const needle = filter.value.trim().toLowerCase();
    const wanted = phaseFilter.value;
    let shown = 0;
    for (const kind of ["experiment", "sweep"]) {
      for (const [name, tr] of rows[kind]) {
        const cls = tr.dataset.class;
        const phaseOk = !wanted || cls === wanted || (wanted === "bad" && cls === "stopped");
        const visible = name.toLowerCase().includes(needle) && phaseOk && !(hideTrials.checked && tr.dataset.sweep);
        tr.hidden = !visible;
        shown += visible ? 1 : 0;
      }
    }
    text(document.getElementById("shown"), `${shown} shown`);
  }
  for (const input of [filter, phaseFilter, hideTrials]) input.addEventListener("input", applyFilter);

  // -- sort: by the clicked column, numbers as numbers, "-" last ------------------------------
  function sortValue(tr, key) {
    const cell = tr.querySelector(`[data-key="${key}"]`);
    const raw = key === "progress" ? cell.querySelector(".fill").style.width : cell.textContent;
    const number = parseFloat(raw);
    return Number.isNaN(number) ? [1, raw.trim() === "-" ? "\uffff" : raw.trim()] : [0, number];
  }
  for (const table of Object.values(tables)) {
    for (const th of table.tHead.rows[0].cells) {
      if (!th.dataset.key) continue;
      const sort = () => {
        const descending = th.dataset.sorted === "asc";
        for (const other of th.parentElement.cells) delete other.dataset.sorted;
        th.dataset.sorted = descending ? "desc" : "asc";
        const body = table.tBodies[0];
        const sorted = Array.from(body.rows).sort((a, b) => {
          const [x, y] = [sortValue(a, th.dataset.key), sortValue(b, th.dataset.key)];
          const order = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
          return descending ? -order : order;
        });
        body.append(...sorted);
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (key) => { if (key.key === "Enter") sort(); });
    }
  }

  // -- compare -------------------------------------------------------------------------------
  const compare = document.getElementById("compare");
  tables.experiment.addEventListener("change", () => {
    const picked = Array.from(tables.experiment.querySelectorAll("input.pick:checked")).map((box) => box.value);
    compare.disabled = picked.length < 2 || picked.length > 4;
    compare.dataset.names = JSON.stringify(picked);
  });
  compare.addEventListener("click", () => {
    const names = JSON.parse(compare.dataset.names || "[]");
    window.location.href = "/compare?" + names.map((n) => `name=${encodeURIComponent(n)}`).join("&");
  });

  applyFilter();
  live("/events", {
    row: (message) => show(message.kind, message.row),
    remove: (message) => remove(message.kind, message.name),
  });
})();
