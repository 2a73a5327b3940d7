//! Constructs the executor does not implement are refused at load time, naming the node and
//! what is missing — never computed wrongly.

use cema_compute::{Graph, GraphError, Trainable, cpu};
use cema_core::OnnxModel;
use cema_core::onnx::{Attr, GraphBuilder};

fn model(body: impl FnOnce(&mut GraphBuilder, &str) -> String) -> OnnxModel {
    let mut g = GraphBuilder::new("refuse", 17);
    let x = g.input("x", &[None, Some(2), Some(4), Some(4)]);
    let out = body(&mut g, &x);
    g.node("Flatten", &[&out], &["logits"], &[]);
    g.output("logits", &[None, None]);
    g.build().expect("model")
}

fn refusal(model: &OnnxModel) -> String {
    let err = Graph::load(model, &cpu(), Trainable::None).expect_err("accepted");
    err.to_string()
}

#[test]
fn unknown_operators_are_named() {
    let m = model(|g, x| g.node("Transpose", &[x], &["y"], &[]));
    let text = refusal(&m);
    assert!(text.contains("node `Transpose_0`") && text.contains("Transpose is not supported"), "{text}");
    assert!(text.contains("Conv"), "lists what is supported: {text}");
}

#[test]
fn unsupported_attributes_and_values_are_named() {
    let w = [1.0f32; 2 * 2 * 3 * 3];
    let same = model(|g, x| {
        let w = g.initializer("w", &[2, 2, 3, 3], &w);
        g.node("Conv", &[x, &w], &["y"], &[("auto_pad", Attr::Str("SAME_UPPER"))])
    });
    let text = refusal(&same);
    assert!(text.contains("Conv_0") && text.contains("auto_pad=SAME_UPPER"), "{text}");

    let storage = model(|g, x| {
        g.node("MaxPool", &[x], &["y"], &[("kernel_shape", Attr::Ints(vec![2, 2])), ("storage_order", Attr::Int(1))])
    });
    assert!(refusal(&storage).contains("storage_order=1"));

    let unknown_attribute = model(|g, x| g.node("Relu", &[x], &["y"], &[("alpha", Attr::Float(0.1))]));
    assert!(refusal(&unknown_attribute).contains("attribute `alpha` is not supported"));

    let reflect = model(|g, x| {
        let pads = g.int64_initializer("pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
        g.node("Pad", &[x, &pads], &["y"], &[("mode", Attr::Str("reflect"))])
    });
    assert!(refusal(&reflect).contains("only constant padding"));

    let conv1d = model(|g, x| {
        let w = g.initializer("w", &[2, 2, 3], &[1.0; 12]);
        g.node("Conv", &[x, &w], &["y"], &[("kernel_shape", Attr::Ints(vec![3]))])
    });
    assert!(refusal(&conv1d).contains("2-D"), "{}", refusal(&conv1d));
}

#[test]
fn run_time_shapes_must_be_constants() {
    let computed_shape = model(|g, x| {
        let shape = g.node("Shape", &[x], &["s"], &[]);
        g.node("Reshape", &[x, &shape], &["y"], &[])
    });
    // Shape itself is refused first, by name.
    assert!(refusal(&computed_shape).contains("Shape is not supported"));
}

#[test]
fn unadaptable_normalisation_is_refused() {
    let ln = model(|g, x| {
        let s = g.initializer("s", &[4], &[1.0; 4]);
        g.node("LayerNormalization", &[x, &s], &["y"], &[])
    });
    let err = Graph::load(&ln, &cpu(), Trainable::None).expect_err("accepted");
    assert!(matches!(err, GraphError::UnsupportedNorm { .. }), "{err}");
}
