# CineSynth: `make demo` renders the example on the tiny profile; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPEC   ?= specs/examples/short.yaml

TTS_VENV ?= .venv-tts

.PHONY: install gpu tts-env fonts browser demo test test-fast bench tiny clean report-screenshot

# torch is pinned: torch==2.13.0 resolves to the CPU build; a looser pin pulls CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[render,ray,dev]'
	touch $@

install: $(VENV)/.installed

# On a CUDA machine: the `gpu` extra's fast paths, each installed on its own (one that cannot
# install here is skipped with a message; the first GPU render says which paths it found).
gpu: install
	@$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu']))" | \
	while read -r req; do \
	  if $(BIN)/python -m pip install -q "$$req"; then echo "gpu: installed $$req"; \
	  else echo "gpu: skipped $$req (it does not install here; the renderer falls back from it)" >&2; fi; \
	done

# The qwen3-tts worker environment: qwen-tts 0.1.1 pins transformers==4.57.3, so it cannot share
# .venv. Its torchaudio is not installed (PyPI's builds are CUDA builds that fail to import);
# the worker stands in for the one function qwen-tts imports (see docs/tts-worker.md).
$(TTS_VENV)/.installed: requirements-tts.txt
	$(PYTHON) -m venv $(TTS_VENV)
	$(TTS_VENV)/bin/python -m pip install -q --upgrade pip
	$(TTS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(TTS_VENV)/bin/python -m pip install -q -r requirements-tts.txt
	$(TTS_VENV)/bin/python -m pip install -q --no-deps qwen-tts==0.1.1
	touch $@

tts-env: $(TTS_VENV)/.installed

# Burnt-in subtitles need a font with the text's glyphs, found through fontconfig: Debian's
# fonts-noto-cjk covers Korean, Chinese and Japanese. Installed (as root, with apt-get) when no
# font with Hangul is listed; elsewhere, install it or set [subtitles] font in cinesynth.toml.
fonts:
	@if ! fc-list ':charset=ac00' file 2>/dev/null | grep -q .; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends fonts-noto-cjk fontconfig >/dev/null; \
	  else \
	    echo "no font with Hangul glyphs: apt-get install fonts-noto-cjk fontconfig" >&2; exit 1; \
	  fi; \
	fi

# The report's browser test drives the system's Chromium through Playwright (its own browser
# download is not used): Debian's chromium, installed (as root, with apt-get) when none is found.
# Elsewhere the test is skipped and says why; CINESYNTH_CHROMIUM names another Chromium.
browser:
	@if [ -z "$$CINESYNTH_CHROMIUM" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "no Chromium: apt-get install chromium (the report's browser test is skipped)" >&2; \
	  fi; \
	fi

# docs/report.png: the report of specs/examples/short.yaml, rendered in a scratch folder.
report-screenshot: install browser
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python tests/report_screenshot.py docs/report.png

demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/cinesynth render $(SPEC)

test: install tts-env fonts browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

tiny: install
	$(BIN)/cinesynth models build-tiny

bench: install
	OMP_NUM_THREADS=1 $(BIN)/python bench/plan_scale.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/noop_render.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/dp_scale.py

clean:
	rm -rf outputs specs/examples/.cinesynth
