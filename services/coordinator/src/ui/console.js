// fleet console: live progress on a running pipeline's page. The page is complete without
// this script; it only follows the pipeline's Server-Sent Events and updates the progress
// bars, their text and the state, then reloads once the pipeline is final to show the report.
"use strict";

(function () {
  var live = document.getElementById("live");
  if (!live || live.dataset.live !== "true" || !window.EventSource) {
    return;
  }
  var id = live.dataset.pipeline;
  // Job states after which a job does no more work (same list as the server's DONE_STATES).
  var DONE = ["succeeded", "dead_lettered", "skipped", "cancelled", "expired"];

  function byData(attr, value) {
    var all = document.querySelectorAll("[" + attr + "]");
    for (var i = 0; i < all.length; i++) {
      if (all[i].getAttribute(attr) === value) {
        return all[i];
      }
    }
    return null;
  }

  // A stage whose first jobs appeared after the page was rendered: copy an existing row.
  function addStage(stage) {
    var rows = live.querySelectorAll(".stage");
    if (rows.length === 0) {
      return null;
    }
    var last = rows[rows.length - 1];
    var row = last.cloneNode(true);
    row.querySelector(".stage-name").textContent = stage;
    row.querySelector("progress").setAttribute("data-stage", stage);
    row.querySelector("[data-stage-text]").setAttribute("data-stage-text", stage);
    last.parentNode.insertBefore(row, last.nextSibling);
    return row.querySelector("progress");
  }

  function updateStage(stage, counts) {
    var total = 0;
    var done = 0;
    var failed = counts.dead_lettered || 0;
    Object.keys(counts).forEach(function (state) {
      total += counts[state];
      if (DONE.indexOf(state) >= 0) {
        done += counts[state];
      }
    });
    var bar = byData("data-stage", stage);
    if (!bar) {
      bar = addStage(stage);
    }
    if (bar) {
      bar.max = Math.max(total, 1);
      bar.value = done;
      bar.textContent = done + "/" + total;
    }
    var text = byData("data-stage-text", stage);
    if (text) {
      text.textContent =
        done + "/" + total + " done" + (failed > 0 ? ", " + failed + " dead-lettered" : "");
    }
  }

  function updateState(state) {
    var badges = live.querySelectorAll("[data-state]");
    for (var i = 0; i < badges.length; i++) {
      badges[i].textContent = state;
      badges[i].className = "state state-" + state;
    }
  }

  var source = new EventSource("/ui/pipelines/" + encodeURIComponent(id) + "/events");
  source.addEventListener("progress", function (e) {
    var data = JSON.parse(e.data);
    Object.keys(data.stages || {}).forEach(function (stage) {
      updateStage(stage, data.stages[stage]);
    });
    var items = live.querySelector("[data-items]");
    if (items) {
      items.textContent = data.items_terminal + "/" + data.items_total;
    }
    updateState(data.state);
  });
  source.addEventListener("final", function (e) {
    source.close();
    var report = JSON.parse(e.data);
    Object.keys(report.stages || {}).forEach(function (stage) {
      updateStage(stage, report.stages[stage]);
    });
    updateState(report.state);
    // The server renders the final report, the items and the timeline: fetch them once.
    window.setTimeout(function () {
      window.location.reload();
    }, 1500);
  });
  source.addEventListener("error", function () {
    // EventSource reconnects by itself; the stream resumes from the store.
  });
})();
