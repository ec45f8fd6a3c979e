"""A real server for bench/real_zlib_server/run.sh: CPython's ThreadingHTTPServer answering each request
with zlib.crc32 of its path (libz from the system, where hotpatch replaces crc32)."""

import http.server
import zlib


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{zlib.crc32(self.path.encode()):#x}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 18080), Handler)
print("ready", flush=True)
server.serve_forever()
