import http.server
import zlib


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{zlib.crc32(self.path.encode()):#x}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 18080), H)
print("ready", flush=True)
s.serve_forever()
