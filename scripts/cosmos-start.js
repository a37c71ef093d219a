// Starts @vercel/cosmosdb-server 1.0.1 over HTTPS for the tests, with shims
// that make it usable from the Go SDK (azcosmos).
//
//   usage: node cosmos-start.js PORT [HOST]
//   env:   COSMOS_CERT_DIR   directory holding cert.pem and key.pem (default: this file's)
//          COSMOS_KEEPALIVE  "0" turns HTTP keep-alive off
//          COSMOS_MAX_RPS    N > 0: answer 429 (x-ms-retry-after-ms) to document
//                            requests beyond N in a one-second window
//          NODE_PATH         where @vercel/cosmosdb-server is installed
//
// Shims:
//  1. Transactional batch: azcosmos sends the partition key only in the
//     x-ms-documentdb-partitionkey header; the server wants it on each
//     operation of the body. Copy it there.
//  2. Reading a missing document throws a TypeError inside the server (500);
//     answer 404 NotFound as Cosmos DB does.
"use strict";
const fs = require("fs");
const path = require("path");

const jsonModule = require("@vercel/cosmosdb-server/lib/json");
const parseJSON = jsonModule.default;
jsonModule.default = async (req) => {
  const body = await parseJSON(req);
  const pk = req.headers["x-ms-documentdb-partitionkey"];
  if (pk !== undefined && Array.isArray(body)) {
    for (const op of body) {
      if (op && op.partitionKey === undefined) op.partitionKey = pk;
    }
  }
  return body;
};

const readModule = require("@vercel/cosmosdb-server/lib/handler/read-document");
const readDocument = readModule.default;
readModule.default = (account, req, res, params) => {
  try {
    return readDocument(account, req, res, params);
  } catch (e) {
    if (!(e instanceof TypeError)) throw e;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
  }
};

const { createHttpsServer } = require("@vercel/cosmosdb-server");
const port = parseInt(process.argv[2] || "8081", 10);
const host = process.argv[3] || "127.0.0.1";
const certDir = process.env.COSMOS_CERT_DIR || __dirname;
const server = createHttpsServer({
  keepAlive: process.env.COSMOS_KEEPALIVE !== "0",
  cert: fs.readFileSync(path.join(certDir, "cert.pem")),
  key: fs.readFileSync(path.join(certDir, "key.pem")),
});

const maxRps = parseInt(process.env.COSMOS_MAX_RPS || "0", 10);
if (maxRps > 0) {
  const [handle] = server.listeners("request");
  server.removeAllListeners("request");
  let windowStart = Date.now();
  let count = 0;
  server.on("request", (req, res) => {
    const now = Date.now();
    if (now - windowStart >= 1000) {
      windowStart = now;
      count = 0;
    }
    if (req.url.includes("/docs") && ++count > maxRps) {
      res.statusCode = 429;
      res.setHeader("content-type", "application/json");
      res.setHeader("x-ms-retry-after-ms", String(1000 - (now - windowStart)));
      res.setHeader("x-ms-substatus", "3200");
      res.setHeader("x-ms-request-charge", "0");
      res.end(JSON.stringify({ code: "TooManyRequests", message: "Request rate is large" }));
      return;
    }
    handle(req, res);
  });
}

server.listen(port, host, () => console.log(`cosmosdb-server ready on https://${host}:${port}`));
