// Sweep: leaderboard, parameters against the objective, every trial's validation curve; live.
"use strict";

(() => {
  const { data, text, el, pagePath, live, chart, palette } = lanex;
  const SVG = "http://www.w3.org/2000/svg";
  let current = data;

  function svg(tag, attributes, content) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (content !== undefined) node.textContent = String(content);
    return node;
  }

  // -- leaderboard ----------------------------------------------------------------------------------
  function showLeaderboard(sweep) {
    const body = document.querySelector("#leaderboard tbody");
    body.replaceChildren(...sweep.trials.map((t) => {
      const first = t.exists ? el("a", { href: pagePath("experiments", t.name), textContent: t.cells[0] })
                             : document.createTextNode(t.cells[0]);
      const tr = el("tr", { className: `${t.best ? "best" : ""}${t.phase === "Stopped" ? " stopped" : ""}` },
                    [el("td", {}, [first]), ...t.cells.slice(1).map((c) => el("td", { textContent: c })),
                     el("td", { className: "why", textContent: ["Stopped", "Failed"].includes(t.phase) ? t.message : "" })]);
      tr.dataset.name = t.name;
      return tr;
    }));
    const badge = document.getElementById("phase");
    text(badge, sweep.row.phase);
    badge.className = `phase ${sweep.row.phaseClass}`;
    const best = document.getElementById("best-line");
    best.replaceChildren(sweep.best ? el("a", { href: pagePath("experiments", sweep.best), textContent: sweep.bestLine })
                                    : document.createTextNode(sweep.bestLine));
    if (sweep.best) best.firstChild.id = "best-link";
    const counts = sweep.status.counts || {};
    text(document.getElementById("counts"), Object.entries(counts).filter(([, v]) => v).map(([k, v]) => `${v} ${k}`).join(", "));
  }

  // -- parallel coordinates (plain SVG) -------------------------------------------------------------
  function showParallel(sweep) {
    const box = document.getElementById("parallel");
    const names = [];
    for (const t of sweep.trials) for (const key of Object.keys(t.parameters)) if (!names.includes(key)) names.push(key);
    const axes = names.map((key) => ({ key, values: sweep.trials.map((t) => t.parameters[key]) }));
    axes.push({ key: "objective", values: sweep.trials.map((t) => t.objective), objective: true });
    const width = Math.max(480, box.getBoundingClientRect().width || 640);
    const height = 260;
    const [top, bottom, left, right] = [24, 36, 60, 60];
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    const step = axes.length > 1 ? (width - left - right) / (axes.length - 1) : 0;
    const position = axes.map((axis, i) => {
      const numbers = axis.values.filter((v) => typeof v === "number");
      const numeric = numbers.length === axis.values.filter((v) => v !== null && v !== undefined).length && numbers.length > 0;
      const categories = numeric ? [] : Array.from(new Set(axis.values.filter((v) => v !== null && v !== undefined).map(String)));
      const [low, high] = numeric ? [Math.min(...numbers), Math.max(...numbers)] : [0, Math.max(1, categories.length - 1)];
      const x = left + i * step;
      root.append(svg("line", { x1: x, x2: x, y1: top, y2: height - bottom, stroke: "#888" }));
      root.append(svg("text", { x, y: height - bottom + 16, "text-anchor": "middle", class: "axis-label" }, axis.key));
      const fmt = (v) => (Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(1) : Number(v.toPrecision(3)));
      if (numeric) {
        root.append(svg("text", { x: x + 4, y: top - 6, class: "tick" }, fmt(high)));
        root.append(svg("text", { x: x + 4, y: height - bottom + 28, class: "tick" }, fmt(low)));
      } else {
        categories.forEach((c, j) => root.append(svg("text", {
          x: x + 4, y: height - bottom - (categories.length > 1 ? j / (categories.length - 1) : 0.5) * (height - top - bottom),
          class: "tick" }, c)));
      }
      return (value) => {
        if (value === null || value === undefined) return null;
        const share = numeric ? (high > low ? (value - low) / (high - low) : 0.5)
                              : (categories.length > 1 ? categories.indexOf(String(value)) / (categories.length - 1) : 0.5);
        return [x, height - bottom - share * (height - top - bottom)];
      };
    });
    sweep.trials.forEach((t, i) => {
      const points = axes.map((axis, a) => position[a](axis.objective ? t.objective : t.parameters[axis.key]))
        .filter((p) => p !== null);
      if (points.length < 2) return;
      const line = svg("polyline", {
        points: points.map((p) => p.join(",")).join(" "), fill: "none",
        stroke: t.objective === null || t.objective === undefined ? "#bbb" : palette[i % palette.length],
        "stroke-width": t.best ? 3.5 : 1.5, "stroke-dasharray": t.phase === "Stopped" ? "5,4" : "" });
      line.append(svg("title", {}, `${t.name}: objective ${t.objective ?? "-"}`));
      line.dataset.trial = t.name;
      root.append(line);
    });
    box.replaceChildren(root);
  }

  // -- every trial's validation curve ----------------------------------------------------------------
  const metric = document.getElementById("val-metric");
  let trialChart = null;
  function showCurves(sweep) {
    const epochs = Array.from(new Set(sweep.trials.flatMap((t) => t.history.map((h) => h.epoch)))).sort((a, b) => a - b);
    const columns = [epochs, ...sweep.trials.map((t) => {
      const byEpoch = new Map(t.history.map((h) => [h.epoch, h[metric.value]]));
      return epochs.map((e) => (byEpoch.has(e) ? byEpoch.get(e) : null));
    })];
    const key = sweep.trials.map((t) => t.name + t.phase).join("|");
    if (trialChart && trialChart.key === key) {
      trialChart.setData(columns);
      return;
    }
    const container = document.getElementById("chart-trials");
    container.replaceChildren();
    trialChart = chart(container, "epoch", sweep.trials.map((t, i) => ({
      label: t.best ? `${t.name} (best)` : t.name, stroke: palette[i % palette.length], width: t.best ? 3 : 1.5,
      dash: t.phase === "Stopped" ? [6, 4] : undefined })), columns);
    trialChart.key = key;
  }
  metric.addEventListener("change", () => { trialChart = null; showCurves(current); });

  function showAll(sweep) {
    current = sweep;
    showLeaderboard(sweep);
    showParallel(sweep);
    showCurves(sweep);
  }
  showAll(data);
  live(`/events/sweeps/${encodeURIComponent(data.name)}`, { sweep: showAll });
  lanex.bindActions(data.name);
})();
