//! The burn executor computes what ONNX Runtime computes (full graph optimisation), for every
//! supported operator and attribute variant and for an ImageNet-size depthwise CNN.

use cema_compute::zoo::{ResNetSpec, mobile_224};
use cema_compute::{Graph, NormMode, Trainable, batch, cpu, values};
use cema_core::OnnxModel;
use cema_core::onnx::generate::{ConvBnClassifier, SplitMix64};
use cema_core::onnx::pb::{TensorProto, tensor_proto::DataType};
use cema_core::onnx::{Attr, GraphBuilder};
use cema_edge::OrtLibrary;

/// Largest relative error allowed between the two engines' logits.
const MAX_RELATIVE_ERROR: f32 = 1e-4;

fn ort_logits(model: &OnnxModel, input: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let library = OrtLibrary::get(None).expect("ONNX Runtime (run scripts/setup.sh)");
    library.run_once(&model.encode(), model.input_names()[0], &dims, input).expect("ORT run")
}

/// Max relative error, relative to the largest magnitude of the reference (so tiny entries
/// are not judged by their own scale).
fn max_relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "output sizes differ");
    let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    actual.iter().zip(expected).map(|(a, e)| (a - e).abs() / scale).fold(0.0, f32::max)
}

fn check(what: &str, model: &OnnxModel, dims: [usize; 4], seed: u64) {
    let input = SplitMix64::new(seed).vec(dims.iter().product(), -2.0, 2.0);
    let expected = ort_logits(model, &input, dims);
    let graph = Graph::load(model, &cpu(), Trainable::None).unwrap_or_else(|e| panic!("{what}: {e}"));
    let logits = graph.forward(batch(&input, dims, graph.device()), NormMode::Inference).expect("forward").logits;
    let error = max_relative_error(&values(logits), &expected);
    assert!(error <= MAX_RELATIVE_ERROR, "{what}: max relative error {error:e}");
}

/// A model `input [2, 4, 6, 6] → body → Flatten → logits`.
fn single(body: impl FnOnce(&mut GraphBuilder, &str) -> String) -> OnnxModel {
    let mut g = GraphBuilder::new("op", 17);
    let x = g.input("x", &[Some(2), Some(4), Some(6), Some(6)]);
    let out = body(&mut g, &x);
    g.node("Flatten", &[&out], &["logits"], &[("axis", Attr::Int(1))]);
    g.output("logits", &[Some(2), None]);
    g.build().expect("model")
}

fn weights(g: &mut GraphBuilder, name: &str, dims: &[usize], seed: u64) -> String {
    let values = SplitMix64::new(seed).vec(dims.iter().product(), -0.5, 0.5);
    g.initializer(name, dims, &values)
}

const DIMS: [usize; 4] = [2, 4, 6, 6];

#[test]
fn convolution_variants() {
    let ints = |v: &[i64]| Attr::Ints(v.to_vec());
    /// (what, input channels per group, output channels, attributes, with bias)
    type ConvCase<'a> = (&'a str, usize, usize, Vec<(&'a str, Attr)>, bool);
    let cases: Vec<ConvCase> = vec![
        ("3x3 pad 1 bias", 4, 6, vec![("pads", ints(&[1, 1, 1, 1]))], true),
        ("stride 2", 4, 6, vec![("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))], true),
        ("asymmetric pads", 4, 6, vec![("pads", ints(&[0, 1, 2, 0]))], true),
        ("dilation 2", 4, 6, vec![("dilations", ints(&[2, 2])), ("pads", ints(&[2, 2, 2, 2]))], true),
        ("groups 2", 2, 6, vec![("group", Attr::Int(2)), ("pads", ints(&[1, 1, 1, 1]))], true),
        ("depthwise", 1, 4, vec![("group", Attr::Int(4)), ("pads", ints(&[1, 1, 1, 1]))], true),
        ("no bias", 4, 6, vec![("kernel_shape", ints(&[3, 3]))], false),
        ("valid auto_pad", 4, 6, vec![("auto_pad", Attr::Str("VALID"))], false),
    ];
    for (i, (what, in_per_group, out, attrs, bias)) in cases.into_iter().enumerate() {
        let model = single(|g, x| {
            let w = weights(g, "w", &[out, in_per_group, 3, 3], i as u64);
            let mut inputs = vec![x.to_owned(), w];
            if bias {
                inputs.push(weights(g, "b", &[out], 100 + i as u64));
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            g.node("Conv", &refs, &["y"], &attrs)
        });
        check(what, &model, DIMS, i as u64);
    }
}

fn scalar(g: &mut GraphBuilder, name: &str, v: f32) -> String {
    g.raw_initializer(TensorProto {
        name: Some(name.into()),
        data_type: Some(DataType::Float as i32),
        float_data: vec![v],
        ..Default::default()
    })
}

#[test]
fn activations_and_clip() {
    check("relu", &single(|g, x| g.node("Relu", &[x], &["y"], &[])), DIMS, 1);
    check("sigmoid", &single(|g, x| g.node("Sigmoid", &[x], &["y"], &[])), DIMS, 2);
    check(
        "hard sigmoid",
        &single(|g, x| g.node("HardSigmoid", &[x], &["y"], &[("alpha", Attr::Float(0.3)), ("beta", Attr::Float(0.4))])),
        DIMS,
        3,
    );
    check("hard sigmoid defaults", &single(|g, x| g.node("HardSigmoid", &[x], &["y"], &[])), DIMS, 4);
    check(
        "clip 0..6 (ReLU6)",
        &single(|g, x| {
            let lo = scalar(g, "lo", 0.0);
            let hi = scalar(g, "hi", 1.5);
            g.node("Clip", &[x, &lo, &hi], &["y"], &[])
        }),
        DIMS,
        5,
    );
    check(
        "clip max only",
        &single(|g, x| {
            let hi = scalar(g, "hi", 0.25);
            g.node("Clip", &[x, "", &hi], &["y"], &[])
        }),
        DIMS,
        6,
    );
}

#[test]
fn elementwise_arithmetic_broadcasts() {
    for (i, op) in ["Add", "Sub", "Mul", "Div", "Sum"].into_iter().enumerate() {
        let per_channel = single(|g, x| {
            let values: Vec<f32> = SplitMix64::new(i as u64).vec(4, 0.5, 1.5);
            let c = g.initializer("c", &[4, 1, 1], &values);
            g.node(op, &[x, &c], &["y"], &[])
        });
        check(&format!("{op} per channel"), &per_channel, DIMS, i as u64);
        let two_values = single(|g, x| {
            let r = g.node("Sigmoid", &[x], &["r"], &[]);
            g.node(op, &[x, &r], &["y"], &[])
        });
        check(&format!("{op} of two values"), &two_values, DIMS, 10 + i as u64);
    }
}

#[test]
fn pooling_variants() {
    let ints = |v: &[i64]| Attr::Ints(v.to_vec());
    let max_cases: Vec<(&str, Vec<(&str, Attr)>)> = vec![
        (
            "max 3x3 s2 p1",
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))],
        ),
        (
            "max 2x2 ceil",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
                ("ceil_mode", Attr::Int(1)),
                ("pads", ints(&[0, 0, 1, 1])),
            ],
        ),
        ("max dilated", vec![("kernel_shape", ints(&[2, 2])), ("dilations", ints(&[2, 2]))]),
    ];
    for (i, (what, attrs)) in max_cases.into_iter().enumerate() {
        check(what, &single(|g, x| g.node("MaxPool", &[x], &["y"], &attrs)), DIMS, i as u64);
    }
    let avg_cases: Vec<(&str, Vec<(&str, Attr)>)> = vec![
        (
            "avg 3x3 s2 p1 exclude pad",
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))],
        ),
        (
            "avg 3x3 s2 p1 include pad",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("count_include_pad", Attr::Int(1)),
            ],
        ),
        (
            "avg 2x2 ceil",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
                ("ceil_mode", Attr::Int(1)),
                ("pads", ints(&[0, 0, 1, 1])),
            ],
        ),
    ];
    for (i, (what, attrs)) in avg_cases.into_iter().enumerate() {
        check(what, &single(|g, x| g.node("AveragePool", &[x], &["y"], &attrs)), DIMS, 20 + i as u64);
    }
    check("global average pool", &single(|g, x| g.node("GlobalAveragePool", &[x], &["y"], &[])), DIMS, 30);
}

#[test]
fn shape_operators() {
    let flatten_then = |body: &dyn Fn(&mut GraphBuilder, &str) -> String| {
        let mut g = GraphBuilder::new("shape", 17);
        let x = g.input("x", &[Some(2), Some(4), Some(6), Some(6)]);
        let out = body(&mut g, &x);
        g.output(&out, &[Some(2), None]);
        g.build().expect("model")
    };
    check(
        "reshape [0, -1]",
        &flatten_then(&|g, x| {
            let shape = g.int64_initializer("shape", &[0, -1]);
            g.node("Reshape", &[x, &shape], &["logits"], &[])
        }),
        DIMS,
        1,
    );
    check(
        "flatten axis 1 + gemm transB alpha beta",
        &flatten_then(&|g, x| {
            let f = g.node("Flatten", &[x], &["f"], &[("axis", Attr::Int(1))]);
            let w = weights(g, "w", &[5, 144], 2);
            let c = weights(g, "c", &[5], 3);
            g.node(
                "Gemm",
                &[&f, &w, &c],
                &["logits"],
                &[("transB", Attr::Int(1)), ("alpha", Attr::Float(0.5)), ("beta", Attr::Float(2.0))],
            )
        }),
        DIMS,
        2,
    );
    check(
        "gemm transA",
        &flatten_then(&|g, x| {
            let f = g.node("Flatten", &[x], &["f"], &[("axis", Attr::Int(1))]);
            let a = weights(g, "a", &[2, 2], 4);
            g.node("Gemm", &[&a, &f], &["logits"], &[("transA", Attr::Int(1))])
        }),
        DIMS,
        3,
    );
    check(
        "matmul",
        &flatten_then(&|g, x| {
            let f = g.node("Flatten", &[x], &["f"], &[]);
            let w = weights(g, "w", &[144, 7], 5);
            g.node("MatMul", &[&f, &w], &["logits"], &[])
        }),
        DIMS,
        4,
    );
    check(
        "softmax",
        &flatten_then(&|g, x| {
            let f = g.node("Flatten", &[x], &["f"], &[]);
            g.node("Softmax", &[&f], &["logits"], &[("axis", Attr::Int(1))])
        }),
        DIMS,
        5,
    );
    check(
        "pad constant",
        &single(|g, x| {
            let pads = g.int64_initializer("pads", &[0, 0, 1, 2, 0, 0, 2, 1]);
            let value = scalar(g, "value", 0.5);
            g.node("Pad", &[x, &pads, &value], &["y"], &[("mode", Attr::Str("constant"))])
        }),
        DIMS,
        6,
    );
    check(
        "concat channels, identity, dropout",
        &single(|g, x| {
            let r = g.node("Relu", &[x], &["r"], &[]);
            let i = g.node("Identity", &[&r], &["i"], &[]);
            let d = g.node("Dropout", &[&i], &["d"], &[]);
            g.node("Concat", &[x, &d], &["y"], &[("axis", Attr::Int(-3))])
        }),
        DIMS,
        7,
    );
}

#[test]
fn reductions() {
    let reduce = |op: &'static str, opset: i64, axes: &[i64], keepdims: i64, axes_as_input: bool| {
        let mut g = GraphBuilder::new("reduce", opset);
        let x = g.input("x", &[Some(2), Some(4), Some(6), Some(6)]);
        let mut attrs = vec![("keepdims", Attr::Int(keepdims))];
        let r = if axes_as_input {
            let axes = g.int64_initializer("axes", axes);
            g.node(op, &[&x, &axes], &["r"], &attrs)
        } else {
            attrs.push(("axes", Attr::Ints(axes.to_vec())));
            g.node(op, &[&x], &["r"], &attrs)
        };
        g.node("Flatten", &[&r], &["logits"], &[]);
        g.output("logits", &[Some(2), None]);
        g.build().expect("model")
    };
    check(
        "ReduceMean (2, 3), keepdims 0 (PyTorch mean pooling)",
        &reduce("ReduceMean", 17, &[2, 3], 0, false),
        DIMS,
        1,
    );
    check("ReduceMean (2, 3), keepdims 1", &reduce("ReduceMean", 17, &[2, 3], 1, false), DIMS, 2);
    check("ReduceMean axes input (opset 18)", &reduce("ReduceMean", 18, &[-1, -2], 0, true), DIMS, 3);
    check("ReduceMean channels", &reduce("ReduceMean", 17, &[1], 1, false), DIMS, 4);
    check("ReduceSum axes input (opset 13+)", &reduce("ReduceSum", 17, &[2, 3], 0, true), DIMS, 5);
    check("ReduceSum (1, 3), keepdims 1 (opset 11 attribute)", &reduce("ReduceSum", 11, &[1, 3], 1, false), DIMS, 6);
}

#[test]
fn conv_bn_classifier_matches() {
    let spec = ConvBnClassifier::seeded(3, 10, 8, 42);
    check("conv-bn classifier", &spec.model().expect("model"), [4, 3, 8, 8], 9);
}

#[test]
fn imagenet_size_depthwise_cnn_matches() {
    check("224-px depthwise CNN", &mobile_224(7).expect("model"), [2, 3, 224, 224], 11);
}

#[test]
fn built_in_architectures_match() {
    check("student architecture", &ResNetSpec::STUDENT.build(1).expect("model"), [3, 1, 28, 28], 12);
    check("foundation architecture", &ResNetSpec::FOUNDATION.build(2).expect("model"), [2, 1, 28, 28], 13);
}

/// Convolution → normalisation → sum → ReLU, which a frozen forward computes as one step when
/// the sum's other operand is the convolution's input's size: a shortcut from the input (either
/// operand order), and a per-channel constant the sum broadcasts (added after the step).
#[test]
fn folded_residual_sums_match() {
    let cases: [(&str, bool, bool); 3] =
        [("identity shortcut", false, false), ("shortcut first", false, true), ("broadcast constant", true, false)];
    for (i, (what, broadcast, shortcut_first)) in cases.into_iter().enumerate() {
        let model = single(|g, x| {
            let w = weights(g, "w", &[4, 4, 3, 3], 50 + i as u64);
            let conv = g.node("Conv", &[x, &w], &["conv"], &[("pads", Attr::Ints(vec![1; 4]))]);
            let mut rng = SplitMix64::new(60 + i as u64);
            let params = [rng.vec(4, 0.5, 1.5), rng.vec(4, -0.5, 0.5), rng.vec(4, -0.5, 0.5), rng.vec(4, 0.5, 2.0)];
            let bn = g.batch_norm(&conv, "bn", [&params[0], &params[1], &params[2], &params[3]], 1e-5);
            let other = if broadcast { weights(g, "c", &[4, 1, 1], 70) } else { x.to_owned() };
            let operands = if shortcut_first { [other.as_str(), bn.as_str()] } else { [bn.as_str(), other.as_str()] };
            let sum = g.node("Add", &operands, &["sum"], &[]);
            g.node("Relu", &[&sum], &["out"], &[])
        });
        check(what, &model, DIMS, 20 + i as u64);
    }
}
