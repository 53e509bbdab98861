// Baseline relay for the Bisik benchmarks (bench/bench_relay.py, bench/bench_idle.py).
//
// A plain Socket.IO 4 server, as the system Bisik grew from ran it, minus storage and
// crypto: a client connects with auth {user, token}, "send" {to, id, body} is forwarded
// as "msg" to every socket of user `to` and acked to the sender at once; the receiver
// answers "delivered" {id} (as a Bisik client acks an envelope). Nothing is stored.
//
// Run: node server.js PORT   (prints "listening PORT" when ready)
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 8770);
const httpServer = http.createServer((req, res) => {
  // The same probe the benchmarks use for the Bisik server.
  if (req.url === "/v1/health") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"ok":true}');
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  // The same ping settings as python-socketio's defaults, which Bisik uses.
  pingInterval: 25000,
  pingTimeout: 20000,
});

io.use((socket, next) => {
  const auth = socket.handshake.auth || {};
  if (typeof auth.user !== "string" || typeof auth.token !== "string") {
    next(new Error("unauthorized"));
    return;
  }
  socket.data.user = auth.user;
  next();
});

io.on("connection", (socket) => {
  socket.join(socket.data.user);
  socket.on("send", (data, ack) => {
    if (!data || typeof data.to !== "string") {
      if (typeof ack === "function") ack({ error: "bad_request" });
      return;
    }
    io.to(data.to).emit("msg", { from: socket.data.user, id: data.id, body: data.body });
    if (typeof ack === "function") ack({ ok: true, id: data.id });
  });
  // Bisik deletes an acked envelope here; the baseline has nothing to delete.
  socket.on("delivered", () => {});
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`listening ${port}`);
});
