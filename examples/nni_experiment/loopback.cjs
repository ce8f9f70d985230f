// Keep NNI's web portal on this machine: bind servers started without a host to loopback.
//
// NNI 3.0's manager (nni_node/rest_server/index.js) calls `app.listen(port)` with no host,
// so Node listens on every interface, and NNI has no option to change that (its
// --url_prefix only moves the portal to another path). Preload this file into the manager:
//
//   NODE_OPTIONS="--require=$PWD/loopback.cjs" nnictl create --config config.yml --port 8080
//
// `nnictl` and `nni.experiment.Experiment` start the manager with the caller's environment,
// so it reaches the manager and nothing else. Servers given a host keep it. The portal is
// then at http://127.0.0.1:8080 only; trials on this machine reach it as `localhost`.
"use strict";

const dns = require("dns");
const net = require("net");

const LOOPBACK = "127.0.0.1";
const original = net.Server.prototype.listen;

// Clients in the manager that dial "localhost" must find the IPv4 loopback it listens on.
dns.setDefaultResultOrder("ipv4first");

function isPort(value) {
  return typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listen(...args) {
  const [first, second] = args;
  if (isPort(first) && (second === undefined || typeof second !== "string")) {
    args.splice(1, 0, LOOPBACK); // listen(port[, backlog][, callback]): no host given
  } else if (first && typeof first === "object" && first.port !== undefined && !first.host) {
    args[0] = { ...first, host: LOOPBACK }; // listen({port}) without a host or path
  }
  return original.apply(this, args);
};
