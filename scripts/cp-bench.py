#!/usr/bin/env python3
"""Control-plane benchmark: VMI creation -> Running through the whole system.

Starts `kubevirt-rs server` (release build) on a scratch directory, then creates VMIs over
HTTPS with the admin token and follows them with one watch, recording per VMI the time
the create returned and the time the watch saw phase Running (raw timestamps, no
histogram buckets), and how many times the VMI object was written up to then. The guest
starts with `startStrategy: Paused`: QEMU runs, its vCPUs never do, so a hundred guests
cost no CPU and the control plane is what is measured (the VMI's phase is Running, with
the Paused condition, as upstream reports it).

    scripts/cp-bench.py [--single 10] [--burst 100] [--rate 10]

Prints a Markdown table and writes target/bench/cp.json.
"""
import argparse, base64, http.client, json, os, shutil, ssl, statistics, subprocess, sys, tempfile, threading, time

VMI = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
    "metadata": {"name": None, "labels": {"bench": "cp"}},
    "spec": {
        "startStrategy": "Paused", "terminationGracePeriodSeconds": 0,
        "domain": {"devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}],
                               "autoattachGraphicsDevice": False, "autoattachPodInterface": False},
                   "memory": {"guest": "64Mi"}},
        "volumes": [{"name": "containerdisk",
                     "containerDisk": {"image": "registry:5000/kubevirt/cirros-container-disk-demo:devel"}}],
    },
}
BASE = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"


class Api:
    def __init__(self, data):
        cfg = json.loads(subprocess.check_output(["kubectl", "--kubeconfig", f"{data}/kubeconfig", "config", "view", "--raw", "-o", "json"]))
        server = cfg["clusters"][0]["cluster"]["server"]
        self.host, self.port = server[len("https://"):].rsplit(":", 1)
        self.token = cfg["users"][0]["user"]["token"]
        self.ctx = ssl.create_default_context(cafile=f"{data}/tls/ca.crt")

    def conn(self):
        return http.client.HTTPSConnection(self.host, int(self.port), context=self.ctx, timeout=600)

    def call(self, method, path, body=None, conn=None):
        c = conn or self.conn()
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None


class Watch(threading.Thread):
    """One watch on the VMIs: when each reached Running, and its writes until then."""

    def __init__(self, api, rv):
        super().__init__(daemon=True)
        self.api, self.rv = api, rv
        self.running, self.writes, self.gone = {}, {}, set()

    def run(self):
        c = self.api.conn()
        c.request("GET", f"{BASE}?watch=true&resourceVersion={self.rv}&labelSelector=bench%3Dcp",
                  headers={"Authorization": f"Bearer {self.api.token}"})
        r = c.getresponse()
        for line in r:
            now = time.monotonic()
            ev = json.loads(line)
            name = ev["object"]["metadata"]["name"]
            if ev["type"] == "MODIFIED" and name not in self.running:
                self.writes[name] = self.writes.get(name, 0) + 1
            if ev["type"] == "DELETED":
                self.gone.add(name)
            phase = ev["object"].get("status", {}).get("phase")
            if phase == "Running" and name not in self.running:
                self.running[name] = now


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def run_round(api, watch, names, rate):
    created = {}
    for i, name in enumerate(names):
        body = json.loads(json.dumps(VMI)); body["metadata"]["name"] = name
        if rate and i:
            delay = created_first + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        api.call("POST", BASE, body)
        created[name] = time.monotonic()
        if i == 0:
            globals()["created_first"] = created[name]
    deadline = time.monotonic() + 300
    while any(n not in watch.running for n in names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not Running after 300 s: {[n for n in names if n not in watch.running][:5]}")
        time.sleep(0.01)
    return [watch.running[n] - created[n] for n in names], [watch.writes.get(n, 0) for n in names]


created_first = 0.0


def delete_all(api, watch, names):
    api.call("DELETE", f"{BASE}?labelSelector=bench%3Dcp")
    deadline = time.monotonic() + 300
    while any(n not in watch.gone for n in names):
        if time.monotonic() > deadline:
            raise RuntimeError("VMIs not gone after 300 s")
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--single", type=int, default=10)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scratch = tempfile.mkdtemp(prefix="kubevirt-rs-cp-bench.")
    env = dict(os.environ, KUBEVIRT_RS_RUN_DIR=f"{scratch}/run", KUBEVIRT_RS_LOG="warn")
    server = subprocess.Popen([f"{root}/target/release/kubevirt-rs", "server", "--data-dir", f"{scratch}/data",
                               "--listen", "127.0.0.1:0", "--node-name", "bench"],
                              env=env, stdout=open(f"{scratch}/server.log", "w"), stderr=subprocess.STDOUT)
    results = {}
    try:
        for _ in range(300):
            try:
                api = Api(f"{scratch}/data")
                api.call("GET", "/apis/subresources.kubevirt.io/v1/version")
                nodes = api.call("GET", "/api/v1/nodes?labelSelector=kubevirt.io%2Fschedulable%3Dtrue")
                if nodes["items"]:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        time.sleep(2)
        results["rss_idle_mib"] = rss_kib(server.pid) / 1024
        rv = api.call("GET", BASE)["metadata"]["resourceVersion"]
        watch = Watch(api, rv); watch.start()
        time.sleep(0.2)
        single, writes = [], []
        for i in range(args.single):
            lat, w = run_round(api, watch, [f"single-{i}"], 0)
            single += lat; writes += w
            delete_all(api, watch, [f"single-{i}"])
        results["single_s"] = single
        names = [f"paced-{i}" for i in range(args.burst)]
        lat, w = run_round(api, watch, names, args.rate)
        results["paced_s"] = lat; writes += w
        time.sleep(3)
        results["rss_loaded_mib"] = rss_kib(server.pid) / 1024
        delete_all(api, watch, names)
        names = [f"burst-{i}" for i in range(args.burst)]
        lat, w = run_round(api, watch, names, 0)
        results["burst_s"] = lat; writes += w
        delete_all(api, watch, names)
        results["vmi_writes_per_start"] = writes
    finally:
        server.terminate(); server.wait(timeout=30)
        subprocess.run(["pkill", "-KILL", "-f", f"{scratch}/run"], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(f"{root}/target/bench", exist_ok=True)
    with open(f"{root}/target/bench/cp.json", "w") as f:
        json.dump(results, f, indent=1)
    ms = lambda xs, p: f"{pct(xs, p) * 1000:.0f} ms"
    print("| VMI creation -> Running | P50 | P95 | max | target |")
    print("|---|---|---|---|---|")
    print(f"| 1 VMI (x{args.single}) | {ms(results['single_s'], 50)} | {ms(results['single_s'], 95)} | {ms(results['single_s'], 100)} | <= 300 ms |")
    print(f"| {args.burst} VMIs at {args.rate:g}/s | {ms(results['paced_s'], 50)} | {ms(results['paced_s'], 95)} | {ms(results['paced_s'], 100)} | P95 <= 1 s |")
    print(f"| {args.burst} VMIs at once | {ms(results['burst_s'], 50)} | {ms(results['burst_s'], 95)} | {ms(results['burst_s'], 100)} | P95 <= 5 s |")
    w = results["vmi_writes_per_start"]
    print()
    print(f"VMI writes per start (after its creation, up to Running): median {statistics.median(w):g}, max {max(w)} (target <= 3)")
    print(f"Control-plane RSS (the kubevirt-rs server process): idle {results['rss_idle_mib']:.1f} MiB, "
          f"with {args.burst} VMIs {results['rss_loaded_mib']:.1f} MiB (target <= 60 MiB)")


if __name__ == "__main__":
    main()
