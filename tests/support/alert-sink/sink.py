"""Keeps every JSON body POSTed to it; GET answers them all as a JSON array, oldest first."""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = []


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            received.append(json.loads(body))
        except ValueError:
            received.append({"unparsed": body.decode("utf-8", "replace")})
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        payload = json.dumps(received).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 8080), Sink).serve_forever()
