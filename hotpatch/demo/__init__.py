"""`hotpatch demo`: build a bundled service and its fix, patch it live, show, revert."""

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_demo(out=sys.stdout) -> int:
    from hotpatch.ops.apply import apply
    from hotpatch.ops.build import build
    from hotpatch.ops.listing import list_process
    from hotpatch.ops.revert import revert

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    with tempfile.TemporaryDirectory(prefix="hotpatch-demo-") as work:
        service, patch = os.path.join(work, "service"), os.path.join(work, "fix.hp")
        say("1. building the demo service and its fix with gcc")
        subprocess.run(["gcc", "-O2", "-g", "-o", service, os.path.join(HERE, "service.c")], check=True)
        build([os.path.join(HERE, "fix.c")], service, patch, warn=lambda m: None)
        proc = subprocess.Popen([service], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"

            def ask(name: str) -> str:
                proc.stdin.write(name + "\n")
                proc.stdin.flush()
                answer = proc.stdout.readline().strip()
                say(f"   request {name!r:<12} -> {answer}")
                return answer

            say(f"2. service running as process {proc.pid}")
            ask("alice")
            ask("bob")
            say(f"3. hotpatch {proc.pid} fix.hp")
            t0 = time.perf_counter()
            report = apply(proc.pid, patch)
            t = report["timings_ms"]
            say(f"   applied patch {report['id']}: greet() replaced in {1000 * (time.perf_counter() - t0):.0f} ms; "
                f"service stopped for {t['resumed'] - t['stopping']:.2f} ms")
            patched = ask("carol")
            say(f"4. hotpatch list {proc.pid}")
            for p in list_process(proc.pid).patches:
                say(f"   {p['id']}  {p['status']}  {p['patch']}  {', '.join(f['name'] for f in p['functions'])}")
            say(f"5. hotpatch revert {proc.pid}")
            revert(proc.pid)
            reverted = ask("dave")
            ok = "patched" in patched and "patched" not in reverted and "(request 4)" in reverted
            say("the service kept its state (request counter) through patch and revert; demo "
                + ("succeeded" if ok else "FAILED"))
            return 0 if ok else 1
        finally:
            proc.stdin.close()
            proc.wait(timeout=5)
