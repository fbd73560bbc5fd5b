"""wbc-counter: live five-part leukocyte differential on a Jetson or a laptop CPU."""


from setuptools import find_packages, setup

setup(
    name="wbc-counter",
    version="0.1.0",
    description="Point-of-care leukocyte differential: detect, type and count white blood cells live",
    packages=find_packages(include=["edge_app", "edge_app.*"]),
    package_data={"edge_app.store.migrations": ["*.sql"],
                  "edge_app.review": ["templates/*.html", "static/*.js", "static/*.css"]},
    python_requires=">=3.8",
    install_requires=[
        "numpy>=1.21; platform_machine!='aarch64'",
        # tflite-runtime (2.13, 2.14: the last releases) is built against NumPy 1.x and cannot load a model
        # under NumPy 2 ("A module that was compiled using NumPy 1.x cannot be run in NumPy 2").
        "numpy>=1.21,<2; platform_machine=='aarch64'",
        "opencv-python-headless>=4.5",
        "onnx>=1.12",
        "pyserial>=3.5",
        "pydantic>=2.5",
        "tomli>=2.0; python_version<'3.11'",
        # CPU fallback runtime; on JetPack images without a wheel use tflite-runtime.
        "ai-edge-litert>=1.0; platform_machine=='x86_64'",
        "tflite-runtime>=2.13; platform_machine=='aarch64'",
        # the review page (wbc-counter serve): server-rendered HTML, no front-end build
        "starlette>=0.37",
        "uvicorn>=0.29",
        "jinja2>=3.1",
    ],
    extras_require={
        "test": ["pytest>=7", "onnxruntime>=1.16", "fhir.resources>=7", "fhirclient>=4.1",
                 "hl7apy>=1.3.4", "hl7>=0.4.5", "ruff>=0.4", "pyyaml>=6",
                 # re-derives the shipped INT8 TFLite files from the FP32 ones (tests/test_quantize.py)
                 "ai-edge-quantizer>=0.10",
                 # display tests grab the Xvfb screen (ImageGrab, XCB)
                 "pillow>=9.2",
                 # the review page in a real headless browser (Debian chromium + chromium-driver)
                 "selenium>=4.20"],
        "train": ["torch==2.13.0", "litert-torch>=0.10", "ai-edge-quantizer>=0.10", "onnxruntime>=1.16",
                  "onnxscript", "tqdm", "matplotlib"],
    },
    entry_points={"console_scripts": ["wbc-counter=edge_app.cli:main"]},
)
