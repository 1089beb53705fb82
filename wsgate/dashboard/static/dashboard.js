// The operator dashboard: everything arrives over the gateway's own WebSocket (no HTTP polling).
import { WsgateClient } from "/client.js";
import { RateChart } from "/dashboard/chart.js";

const $ = (id) => document.getElementById(id);
/** Say something next to the card it is about (`where`: publish, tail, disconnect), or at the page's end. */
const status = (text, where = "") => { $(where ? `${where}-status` : "status").textContent = text; };
const chart = new RateChart($("chart"));
const client = new WsgateClient(location.origin.replace(/^http/, "ws") + "/ws");

/** Replace a table body's rows with `rows` (arrays of cell values). */
function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      tr.append(td);
    }
    return tr;
  }));
}

client.on("dashboard_stats", ({ data }) => {
  const node = data.node;
  const nodes = data.nodes.length ? data.nodes : [node];
  const sum = (key) => nodes.reduce((total, n) => total + n[key], 0);
  $("clients").textContent = sum("clients");
  const operators = sum("operators");
  $("operators").textContent = operators ? `incl. ${operators} dashboard${operators > 1 ? "s" : ""}` : "";
  $("rooms").textContent = sum("rooms");
  $("in-rate").textContent = sum("in_per_s");
  $("out-rate").textContent = sum("out_per_s");
  chart.add(sum("in_per_s"), sum("out_per_s"));
  $("broker").textContent = `broker: ${node.broker}`;
  $("broker").className = `badge ${node.broker === "ok" ? "ok" : "bad"}`;
  fill($("room-table"), node.top_rooms);
  fill($("error-table"), Object.entries(node.errors).sort((a, b) => b[1] - a[1]));
  fill($("node-table"), nodes.map((n) => [n.node.slice(0, 8), n.clients, n.rooms, n.in_per_s, n.out_per_s, n.broker]));
  $("client-ids").replaceChildren(...node.clients_sample.map((c) => {
    const option = document.createElement("option");
    option.value = c.client_id;
    option.label = `${c.remote ?? ""} · ${c.rooms} rooms${c.operator ? " · dashboard" : ""}`;
    return option;
  }));
});

client.on("message", (message) => {
  const item = document.createElement("li");
  item.textContent = `${message.room ?? "(broadcast)"} ${JSON.stringify(message.data)}`;
  $("tail-log").append(item);
  while ($("tail-log").children.length > 100) $("tail-log").firstElementChild.remove();
});

client.on("open", async () => {
  $("connection").textContent = "live";
  $("connection").className = "badge ok";
  try {
    await client.request({ type: "dashboard_watch" }, (m) => m.type === "dashboard_watching");
  } catch (error) {
    status(`Not an operator: ${error.message}`);
  }
});
client.on("close", ({ reason }) => {
  if (reason.startsWith("dashboard session ended")) {  // logged out, expired or replaced: back to the login form
    client.close();
    location.reload();
    return;
  }
  $("connection").textContent = "reconnecting";
  $("connection").className = "badge bad";
});

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let data;
  try {
    data = JSON.parse($("publish-data").value);
  } catch (error) {
    status(`Data is not JSON: ${error.message}`, "publish");
    return;
  }
  const room = $("publish-room").value;
  try {
    const answer = await client.request({ type: "dashboard_publish", room, data },
      (m) => m.type === "dashboard_published" && m.room === room);
    status(`Published to ${room}: ${answer.data.delivered} clients on this node`, "publish");
  } catch (error) {
    status(`Publish failed: ${error.message}`, "publish");
  }
});

$("tail-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const room = $("tail-room").value;
  try {
    await client.request({ type: "dashboard_tail", room }, (m) => m.type === "dashboard_tailing" && m.room === room);
    status(`Tailing ${room}`, "tail");
  } catch (error) {
    status(`Tail failed: ${error.message}`, "tail");
  }
});

$("disconnect-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const clientId = $("disconnect-id").value;
  if (!confirm(`Disconnect client ${clientId}?`)) return;
  try {
    const answer = await client.request({ type: "dashboard_disconnect", client_id: clientId },
      (m) => m.type === "dashboard_disconnected");
    status(answer.data.found ? `Disconnected ${clientId}` : `No client ${clientId} on this node`, "disconnect");
  } catch (error) {
    status(`Disconnect failed: ${error.message}`, "disconnect");
  }
});

client.connect();
