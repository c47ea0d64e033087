// lanex ui: what every page shares. Data is only ever written as text (textContent, createTextNode,
// setAttribute of plain values): names, messages and log lines never become HTML.
"use strict";

const lanex = (() => {
  const dataNode = document.getElementById("page-data");
  const data = dataNode ? JSON.parse(dataNode.textContent) : null;
  const palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#7f7f7f", "#bcbd22"];

  function text(node, value) {
    if (node) node.textContent = value === null || value === undefined ? "" : String(value);
  }

  // A new element: `props` sets only className, textContent, href (same-site paths or http(s)) and title.
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "href") {
        const url = String(value);
        if (url.startsWith("/") || /^https?:\/\//i.test(url)) node.setAttribute("href", url);
      } else if (key === "className" || key === "textContent" || key === "title") {
        node[key] = value === null || value === undefined ? "" : String(value);
      }
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function pagePath(kind, name) {
    return `/${kind}/${encodeURIComponent(name)}`;
  }

  // One EventSource per page; the badge in the header says whether it is connected.
  function live(url, handlers) {
    const badge = document.getElementById("live");
    const source = new EventSource(url);
    source.addEventListener("open", () => { text(badge, "live"); badge.className = "live on"; });
    source.addEventListener("error", () => { text(badge, "reconnecting…"); badge.className = "live off"; });
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (message) => handle(JSON.parse(message.data)));
    }
    return source;
  }

  const charts = [];

  function chartWidth(container) {
    return Math.max(280, Math.floor(container.getBoundingClientRect().width || 480));
  }

  // A uPlot line chart; `series` are {label, stroke, scale?, dash?}; data is [xs, ys1, ys2, ...].
  function chart(container, xLabel, series, data, extra) {
    const options = Object.assign({
      width: chartWidth(container), height: 220,
      scales: { x: { time: false } },
      series: [{ label: xLabel }].concat(series.map((s, i) => Object.assign(
        { stroke: s.stroke || palette[i % palette.length], width: 1.5, spanGaps: true, points: { show: false } }, s))),
      axes: [{ label: xLabel }, { size: 60 }],
      legend: { live: true },
    }, extra || {});
    const plot = new uPlot(options, data, container);
    charts.push([plot, container]);
    return plot;
  }

  window.addEventListener("resize", () => {
    for (const [plot, container] of charts) plot.setSize({ width: chartWidth(container), height: 220 });
  });

  function bindCopyButtons() {
    for (const button of document.querySelectorAll(".copy-button")) {
      button.addEventListener("click", async () => {
        const code = button.previousElementSibling;
        try {
          await navigator.clipboard.writeText(code.textContent);
          text(button, "Copied");
        } catch (error) {  // not a secure context: select it for Ctrl-C instead
          const range = document.createRange();
          range.selectNodeContents(code);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          text(button, "Selected");
        }
      });
    }
  }

  // The action buttons (only rendered with --allow-actions): POST with the header that proves same origin.
  function bindActions(name) {
    const result = document.getElementById("action-result");
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.action;
        if (action === "delete" && !window.confirm(`Delete ${name}? Its retention applies.`)) return;
        const response = await fetch(`/actions/${action}/${encodeURIComponent(name)}`,
                                     { method: "POST", headers: { "X-Lanex-Action": "1" } });
        const body = await response.json();
        text(result, body.message || `error: ${body.error}`);
        result.className = response.ok ? "message" : "message problem";
      });
    }
  }

  return { data, palette, text, el, pagePath, live, chart, bindCopyButtons, bindActions };
})();
