#!/usr/bin/env node
// A small CRI client that does to a container runtime what kubelet does to start and stop pods, over the
// runtime's gRPC socket (CRI v1, test/cri/api.proto): Status until NetworkReady (and until the runtime
// has loaded the expected network), RunPodSandbox, PodSandboxStatus for the pod's IP, one container per
// pod that checks its eth0 address and pings the gateway and another pod, StopPodSandbox,
// RemovePodSandbox. Used by scripts/cri-test.sh; prints one ok/FAIL line per check and writes a JSON
// report (pods with their IP, netns path, host veth and timings) for the script's leftover checks.
//
//   node test/cri/cri-pods.js --socket S --network NAME --gateway IP --image REF --pods N
//        [--parallel] [--label L] [--log-dir DIR] [--report FILE] [--timeout-ms N]
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const { performance } = require('node:perf_hooks');

function parseArgs(argv) {
  const o = { pods: 2, parallel: false, label: 'pods', timeoutMs: 20_000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--socket') o.socket = next();
    else if (a === '--network') o.network = next();
    else if (a === '--gateway') o.gateway = next();
    else if (a === '--image') o.image = next();
    else if (a === '--pods') o.pods = Number(next());
    else if (a === '--parallel') o.parallel = true;
    else if (a === '--label') o.label = next();
    else if (a === '--bridge') o.bridge = next();
    else if (a === '--log-dir') o.logDir = next();
    else if (a === '--report') o.report = next();
    else if (a === '--timeout-ms') o.timeoutMs = Number(next());
    else if (a === '--stop-only') o.stopOnly = next();
    else throw new Error(`unknown argument ${a}`);
  }
  if (o.stopOnly !== undefined) return o;
  for (const k of ['socket', 'network', 'gateway', 'image'])
    if (o[k] === undefined) throw new Error(`--${k} is required`);
  if (!(o.pods >= 2)) throw new Error('--pods must be at least 2 (each pod pings another)');
  return o;
}

function connect(socket) {
  const grpc = require('@grpc/grpc-js');
  const loader = require('@grpc/proto-loader');
  const def = loader.loadSync(path.join(__dirname, 'api.proto'), {
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
  });
  const v1 = grpc.loadPackageDefinition(def).runtime.v1;
  const creds = grpc.credentials.createInsecure();
  const opts = { 'grpc.max_receive_message_length': 16 * 1024 * 1024 };
  const runtime = new v1.RuntimeService(`unix://${socket}`, creds, opts);
  const images = new v1.ImageService(`unix://${socket}`, creds, opts);
  const call = (client, method, req, timeoutMs) =>
    new Promise((resolve, reject) => {
      client[method](req, { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(new Error(`${method}: ${err.details || err.message}`));
        else resolve(res);
      });
    });
  return {
    rt: (method, req, timeoutMs = 60_000) => call(runtime, method, req, timeoutMs),
    img: (method, req, timeoutMs = 10_000) => call(images, method, req, timeoutMs),
    close: () => {
      runtime.close();
      images.close();
    },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let fails = 0;
function report(ok, name, detail) {
  if (!ok) fails++;
  process.stdout.write(`${ok ? 'ok  ' : 'FAIL'} ${name}\n`);
  if (!ok && detail) process.stdout.write(`${String(detail).replace(/^/gm, '     | ')}\n`);
}

/** Status until the runtime says NetworkReady and its loaded CNI config names our network (kubelet waits
 * for NetworkReady before it starts pods that need the network). */
async function waitNetworkReady(cri, network, timeoutMs) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const s = await cri.rt('Status', { verbose: true }, 5_000);
      const conds = s.status?.conditions ?? [];
      const net = conds.find((c) => c.type === 'NetworkReady');
      const loaded = s.info?.cniconfig ?? '';
      if (net?.status && loaded.includes(`"Name":"${network}"`)) return true;
      last = `NetworkReady=${net?.status} reason=${net?.reason ?? ''} ${net?.message ?? ''}; network ${network} ${
        loaded.includes(network) ? 'loaded' : 'not loaded yet'
      }; lastCNILoadStatus: ${s.info?.lastCNILoadStatus ?? '?'}`;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > until) throw new Error(`runtime not ready for ${network}: ${last}`);
    await sleep(200);
  }
}

function sandboxConfig(o, i, runId) {
  const name = `${o.label}-${i}`;
  const logDirectory = o.logDir ? path.join(o.logDir, name) : '';
  if (logDirectory) fs.mkdirSync(logDirectory, { recursive: true });
  return {
    metadata: { name, uid: `${runId}-${o.label}-${i}`, namespace: 'berth-cri-test', attempt: 0 },
    hostname: name,
    logDirectory,
    labels: { app: 'berth-cri-test', run: runId },
    linux: {
      // A test's own cgroup parent (cri-test: /bt<pid>), which its cleanup can tell from anyone else's.
      cgroup_parent: process.env.CRI_TEST_CGROUP_PARENT ?? '',
      securityContext: { namespaceOptions: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } },
    },
  };
}

/** One pod: RunPodSandbox (timed: this is where the runtime runs CNI ADD) and its status. */
async function startPod(cri, o, i, runId) {
  const config = sandboxConfig(o, i, runId);
  const pod = { name: config.metadata.name, config };
  const t0 = performance.now();
  const res = await cri.rt('RunPodSandbox', { config });
  pod.runMs = performance.now() - t0;
  pod.id = res.podSandboxId;
  const st = await cri.rt('PodSandboxStatus', { podSandboxId: pod.id, verbose: true });
  pod.state = st.status.state;
  pod.ip = st.status.network?.ip ?? '';
  pod.additionalIps = (st.status.network?.additionalIps ?? []).map((x) => x.ip);
  const info = JSON.parse(st.info?.info ?? '{}');
  const nsEntry = (info.runtimeSpec?.linux?.namespaces ?? []).find((n) => n.type === 'network');
  pod.netns = nsEntry?.path ?? '';
  // The host side of the pod's veth, from the CNI result the runtime kept.
  const ifaces = info.cniResult?.Interfaces ?? {};
  pod.hostVeths = Object.entries(ifaces)
    .filter(
      ([name, v]) =>
        name !== 'eth0' && name !== 'lo' && (v.Sandbox ?? '') === '' && !name.startsWith(o.bridge ?? '\0'),
    )
    .map(([name]) => name);
  pod.cniInterfaces = Object.keys(ifaces);
  return pod;
}

/** A container in the pod (kubelet: CreateContainer + StartContainer) that checks the pod's address is on
 * its eth0 and pings the gateway and a peer pod; waits for it to exit and reads its exit code. */
async function runProbe(cri, o, pod, peer) {
  const script = [
    `ip -4 -o addr show dev eth0 | grep -q ' inet ${pod.ip}/' || { echo "eth0 has not ${pod.ip}"; ip addr; exit 3; }`,
    `ping -c 1 -W 2 ${o.gateway} || ping -c 1 -W 2 ${o.gateway} || exit 4`,
    `ping -c 1 -W 2 ${peer.ip} || ping -c 1 -W 2 ${peer.ip} || exit 5`,
    'echo probe-ok',
  ].join('\n');
  const t0 = performance.now();
  const created = await cri.rt('CreateContainer', {
    podSandboxId: pod.id,
    config: {
      metadata: { name: 'probe', attempt: 0 },
      image: { image: o.image },
      command: ['/bin/sh', '-c', script],
      logPath: pod.config.logDirectory ? 'probe.log' : '',
    },
    sandboxConfig: pod.config,
  });
  const cid = created.containerId;
  await cri.rt('StartContainer', { containerId: cid });
  let status;
  for (const until = Date.now() + 30_000; ;) {
    status = (await cri.rt('ContainerStatus', { containerId: cid })).status;
    if (status.state === 'CONTAINER_EXITED' || Date.now() > until) break;
    await sleep(100);
  }
  const probeMs = performance.now() - t0;
  const logFile = pod.config.logDirectory ? path.join(pod.config.logDirectory, 'probe.log') : '';
  const log = logFile && fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
  await cri.rt('StopContainer', { containerId: cid, timeout: 0 });
  await cri.rt('RemoveContainer', { containerId: cid });
  return { state: status.state, exitCode: status.exitCode, probeMs, log };
}

async function stopPod(cri, pod) {
  const t0 = performance.now();
  await cri.rt('StopPodSandbox', { podSandboxId: pod.id });
  pod.stopMs = performance.now() - t0;
  await cri.rt('RemovePodSandbox', { podSandboxId: pod.id });
  pod.removed = true;
}

const each = (parallel, items, fn) =>
  parallel
    ? Promise.allSettled(items.map(fn))
    : items.reduce(
        (p, item, i) =>
          p.then(async (acc) => {
            try {
              acc.push({ status: 'fulfilled', value: await fn(item, i) });
            } catch (reason) {
              acc.push({ status: 'rejected', reason });
            }
            return acc;
          }),
        Promise.resolve([]),
      );

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const cri = connect(o.socket);
  if (o.stopOnly !== undefined) {
    // Clean-up after a failed run: StopPodSandbox (the runtime runs CNI DEL) and RemovePodSandbox.
    await stopPod(cri, { id: o.stopOnly });
    cri.close();
    return;
  }
  const runId = `${process.pid}-${Date.now().toString(36)}`;
  const how = o.parallel ? `${o.pods} at once` : `${o.pods} one after another`;
  const pods = [];
  try {
    const v = await cri.rt('Version', { version: 'v1' }, 10_000);
    report(
      true,
      `[${o.label}] CRI Version: ${v.runtimeName} ${v.runtimeVersion} (API ${v.runtimeApiVersion})`,
    );
    await waitNetworkReady(cri, o.network, o.timeoutMs);
    report(true, `[${o.label}] Status: NetworkReady with network ${o.network} loaded`);
    const img = await cri.img('ImageStatus', { image: { image: o.image } });
    report(Boolean(img.image?.id), `[${o.label}] ImageStatus: ${o.image} is present`);

    const started = await each(o.parallel, [...Array(o.pods).keys()], (i) => startPod(cri, o, i, runId));
    started.forEach((s, i) => {
      if (s.status === 'fulfilled') pods.push(s.value);
      report(
        s.status === 'fulfilled',
        `[${o.label}] RunPodSandbox ${o.label}-${i} (${how})`,
        s.reason?.message,
      );
    });
    for (const pod of pods) {
      const ok = pod.state === 'SANDBOX_READY' && /^\d+\.\d+\.\d+\.\d+$/.test(pod.ip) && pod.netns !== '';
      report(ok, `[${o.label}] PodSandboxStatus ${pod.name}: ${pod.state} ip=${pod.ip} netns=${pod.netns}`);
    }
    const ips = pods.map((p) => p.ip);
    report(new Set(ips).size === ips.length, `[${o.label}] every pod has its own address`, ips.join(' '));

    if (pods.length >= 2) {
      const probes = await each(o.parallel, pods, (pod, i) =>
        runProbe(cri, o, pod, pods[(i + 1) % pods.length]),
      );
      probes.forEach((p, i) => {
        const pod = pods[i];
        const peer = pods[(i + 1) % pods.length];
        const ok = p.status === 'fulfilled' && p.value.state === 'CONTAINER_EXITED' && p.value.exitCode === 0;
        if (p.status === 'fulfilled') pod.probeMs = p.value.probeMs;
        const detail =
          p.status === 'rejected'
            ? p.reason.message
            : `state ${p.value.state} exit ${p.value.exitCode}\n${p.value.log}`;
        report(
          ok,
          `[${o.label}] container in ${pod.name} has ${pod.ip} on eth0, pings gateway ${o.gateway} and ${peer.name} ${peer.ip}`,
          detail,
        );
      });
    }
  } catch (err) {
    report(false, `[${o.label}] ${err.message}`);
  } finally {
    const stopped = await each(o.parallel, pods, (pod) => stopPod(cri, pod));
    stopped.forEach((s, i) =>
      report(
        s.status === 'fulfilled',
        `[${o.label}] StopPodSandbox + RemovePodSandbox ${pods[i].name}`,
        s.reason?.message,
      ),
    );
    cri.close();
    if (o.report) {
      const out = pods.map((p) => Object.fromEntries(Object.entries(p).filter(([k]) => k !== 'config')));
      fs.writeFileSync(
        o.report,
        `${JSON.stringify({ label: o.label, parallel: o.parallel, pods: out }, null, 2)}\n`,
      );
    }
  }
  process.exitCode = fails === 0 ? 0 : 1;
}

main().catch((err) => {
  process.stderr.write(`cri-pods: ${err.stack || err.message}\n`);
  process.exitCode = 2;
});
