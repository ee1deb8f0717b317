# Every target creates .venv if missing and installs what it needs.
# llama-cpp-python is compiled from source on first install (about 4 minutes on 2 idle cores),
# without host-specific CPU instructions (GGML_NATIVE=OFF) so the build runs on other x86-64 CPUs.
# pip caches the built wheel and its cache ignores CMAKE_ARGS: to rebuild with other flags run
#   make rebuild-llama CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_CUDA=on'
# TORCH pins the PyTorch build (CPU, for the fine-tuning stack).
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH      ?= torch==2.13.0
CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export CMAKE_ARGS

.PHONY: venv run chat test test-all lint package screenshots rebuild-llama clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[train,test]'
	$(PY) -m engine.models.bundled
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/chatfactory-desktop

chat: venv
	$(VENV)/bin/chatfactory chat

test: venv
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

test-all: venv
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m ''

lint: venv
	$(VENV)/bin/ruff check engine desktop tests bench

# the main window in light and dark themes, under Xvfb (apt-get install xvfb xauth libxcb-icccm4 libxcb-keysyms1)
screenshots: venv
	xvfb-run -a -s "-screen 0 1400x900x24" $(PY) -m desktop.screenshots --out assets/screenshots

package: venv
	$(PY) -m pip install -q 'pyinstaller>=6'
	packaging/build_linux.sh $(PY)

rebuild-llama: venv
	$(PY) -m pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python

clean:
	rm -rf $(VENV) runs test-artifacts build dist
