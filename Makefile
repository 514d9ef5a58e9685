# Every target bootstraps .venv itself; the stamp file makes a second run skip the install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.l2o-installed
# Headless runs: no tqdm redraw spam, no interactive plot windows.
export L2O_HEADLESS ?= 1

.PHONY: demo test lab bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and alone: the build is large and pinned to the pair known to work.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	# papermill looks for a kernel named python3; register the venv's own.
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (l2o-lab)" >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/l2o run --profile quick --jobs 2

test: $(STAMP)
	$(BIN)/python -m pytest

lab: $(STAMP)
	L2O_HEADLESS=0 $(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/l2o bench

clean:
	rm -rf runs figures/*.html figures/*.png
