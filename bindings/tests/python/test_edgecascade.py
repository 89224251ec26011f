"""The generated Python bindings against the host library and SmolLM2: one generation, one
streamed answer through a listener, one typed error. Run by scripts/test-python.sh."""
import os
import tempfile
import threading
import unittest

from edgecascade_sdk import edgecascade
from edgecascade_sdk import edgecascade_ffi as ec

MODEL = os.path.join(os.environ.get("EDGECASCADE_MODELS", "models"),
                     "smollm2-135m-instruct-q4_1.gguf")


def runtime():
    config = ec.default_config()
    config.local.model = MODEL
    config.local.n_ctx = 512
    return ec.Runtime(config)


def greedy(prompt, max_tokens=16):
    req = ec.user_request(prompt)
    req.max_tokens = max_tokens
    req.sampling.temperature = 0.0
    return req


class Collector(ec.ChatListener):
    def __init__(self):
        self.tokens = []
        self.done = None
        self.failed = None
        self.ended = threading.Event()

    def on_token(self, text, tier):
        self.tokens.append(text)

    def on_escalating(self, reason):
        pass

    def on_falling_back(self, detail):
        pass

    def on_done(self, response):
        self.done = response
        self.ended.set()

    def on_failed(self, error):
        self.failed = error
        self.ended.set()


class EdgeCascadeTest(unittest.TestCase):
    def test_one_generation(self):
        r = runtime().chat(greedy("What is the capital of France?"))
        self.assertTrue(r.text.strip())
        self.assertEqual(r.route, edgecascade.Route.LOCAL)
        self.assertEqual(r.reason, edgecascade.Reason.NO_REMOTE)
        self.assertGreater(r.cost.total_usd, 0.0)

    def test_streamed_answer(self):
        rt = runtime()
        c = Collector()
        handle = rt.start_chat(greedy("Name three colours.", 24), c)
        r = handle.wait()
        self.assertTrue(c.ended.wait(60))
        self.assertIsNone(c.failed)
        self.assertEqual("".join(c.tokens), r.text)
        self.assertEqual(c.done.text, r.text)

    def test_typed_error(self):
        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(b"not a model")
            f.flush()
            config = ec.default_config()
            config.local.model = f.name
            with self.assertRaises(ec.EdgeCascadeError.InvalidModelFile) as e:
                ec.Runtime(config)
            self.assertIn(f.name, str(e.exception))


if __name__ == "__main__":
    unittest.main()
