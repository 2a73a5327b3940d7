//! ONNX Runtime, loaded once per process: where the library is looked for, the shared
//! environment, and sessions built the one way both binaries want them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

/// Environment variable naming the ONNX Runtime library (also read by `ort` itself).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// File name looked for next to the running binary.
const LIBRARY_FILE: &str = "libonnxruntime.so";

/// Why ONNX Runtime could not be loaded or run a model.
#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    /// No ONNX Runtime library was found.
    #[error(
        "ONNX Runtime library not found; looked in: {}. Run scripts/setup.sh, set {ORT_DYLIB_ENV}, or pass the path in the config",
        .looked.join(", ")
    )]
    LibraryNotFound {
        /// Every place that was tried, with why it did not qualify.
        looked: Vec<String>,
    },
    /// The library exists but could not be loaded (wrong file, too old a version).
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    LibraryLoad {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// ONNX Runtime refused the model or failed to run it.
    #[error("ONNX Runtime: {0}")]
    Run(String),
}

impl From<ort::Error> for OrtError {
    fn from(e: ort::Error) -> Self {
        OrtError::Run(e.to_string())
    }
}

/// The process-wide ONNX Runtime environment. ONNX Runtime can be loaded and initialised only
/// once per process, so every session shares this one.
#[derive(Debug, Clone)]
pub struct OrtLibrary {
    environment: ort::environment::Environment,
    path: PathBuf,
}

static LIBRARY: Mutex<Option<OrtLibrary>> = Mutex::new(None);

impl OrtLibrary {
    /// Loads ONNX Runtime on first use; later calls return the loaded one.
    ///
    /// The library is looked for at `configured` (if given), then at `$ORT_DYLIB_PATH`, then
    /// next to the running binary (`libonnxruntime.so` or `lib/libonnxruntime.so`).
    pub fn get(configured: Option<&Path>) -> Result<OrtLibrary, OrtError> {
        let mut slot = LIBRARY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(library) = slot.as_ref() {
            return Ok(library.clone());
        }
        let path = locate(configured)?;
        let load_error = |reason: String| OrtError::LibraryLoad { path: path.clone(), reason };
        let environment = ort::init_from(&path)
            .map_err(|e| load_error(e.to_string()))?
            .with_name("cema")
            .build()
            .map_err(|e| load_error(e.to_string()))?;
        tracing::info!(path = %path.display(), "loaded ONNX Runtime");
        let library = OrtLibrary { environment, path };
        *slot = Some(library.clone());
        Ok(library)
    }

    /// The file the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A plain ONNX Runtime session at full graph optimisation, for callers that run a model
    /// directly (benchmarks against the agent, models whose output is not class logits).
    pub fn session(&self, model: &[u8], intra_threads: usize) -> Result<Session, OrtError> {
        build_session(self, model, intra_threads)
    }

    /// Runs `model` once on one input and returns its first output as f32 values: for checks
    /// that compare engines or reference outputs, not for serving.
    pub fn run_once(
        &self,
        model: &[u8],
        input_name: &str,
        dims: &[usize],
        input: &[f32],
    ) -> Result<Vec<f32>, OrtError> {
        let mut session = self.session(model, 1)?;
        let tensor = TensorRef::from_array_view((dims.to_vec(), input))?;
        let outputs = session.run(ort::inputs![input_name => tensor])?;
        Ok(outputs[0].try_extract_tensor::<f32>()?.1.to_vec())
    }
}

fn locate(configured: Option<&Path>) -> Result<PathBuf, OrtError> {
    let exe_dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    locate_in(configured, std::env::var_os(ORT_DYLIB_ENV).map(PathBuf::from), exe_dir)
}

fn locate_in(
    configured: Option<&Path>,
    from_env: Option<PathBuf>,
    exe_dir: Option<PathBuf>,
) -> Result<PathBuf, OrtError> {
    let mut looked = Vec::new();
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if let Some(path) = configured {
        candidates.push(("configured path".to_owned(), path.to_path_buf()));
    }
    match from_env {
        Some(path) => candidates.push((format!("${ORT_DYLIB_ENV}"), path)),
        None => looked.push(format!("${ORT_DYLIB_ENV} (not set)")),
    }
    if let Some(dir) = exe_dir {
        candidates.push(("next to the binary".to_owned(), dir.join(LIBRARY_FILE)));
        candidates.push(("next to the binary".to_owned(), dir.join("lib").join(LIBRARY_FILE)));
    }
    for (origin, path) in candidates {
        if path.is_file() {
            return Ok(path);
        }
        looked.push(format!("{} ({origin}: no such file)", path.display()));
    }
    Err(OrtError::LibraryNotFound { looked })
}

/// Builds a session at full graph optimisation from model bytes.
fn build_session(library: &OrtLibrary, model: &[u8], intra_threads: usize) -> Result<Session, OrtError> {
    // Builder errors are not `Send`; convert inside this function.
    let build = || -> ort::Result<Session> {
        // No memory pattern: it plans one block per input shape on top of the arena and keeps
        // it. Off, the agent's peak RSS with a 224-px MobileNet v1 at batch 16 fell from 418 to
        // 314 MB at the same throughput (`cema-edge bench --agent-only`, README "Figures").
        let mut builder = Session::builder(&library.environment)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(intra_threads.max(1))?
            .with_memory_pattern(false)?;
        if intra_threads > 1 {
            // Spinning threads steal the shared cores of small devices from everything else.
            builder = builder.with_intra_op_spinning(false)?;
        }
        builder.commit_from_memory(model)
    };
    Ok(build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_error_names_every_place_looked() {
        let err =
            locate_in(Some(Path::new("/nonexistent/configured.so")), None, Some(PathBuf::from("/nonexistent/bin")))
                .expect_err("found a library that does not exist");
        let text = err.to_string();
        for place in [
            "/nonexistent/configured.so (configured path: no such file)",
            "$ORT_DYLIB_PATH (not set)",
            "/nonexistent/bin/libonnxruntime.so (next to the binary: no such file)",
            "/nonexistent/bin/lib/libonnxruntime.so",
            "scripts/setup.sh",
        ] {
            assert!(text.contains(place), "`{place}` missing from: {text}");
        }
    }

    #[test]
    fn the_first_existing_candidate_wins() {
        let dir = std::env::temp_dir().join(format!("cema-locate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let lib = dir.join(LIBRARY_FILE);
        std::fs::write(&lib, b"").expect("write");
        let found =
            locate_in(Some(Path::new("/nonexistent.so")), Some(PathBuf::from("/also/missing.so")), Some(dir.clone()));
        assert_eq!(found.expect("found"), lib);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
