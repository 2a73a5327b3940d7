//! Fashion-MNIST and labelled image folders: complete reads and typed errors for bad files.

use std::io::Write;

use cema_shift::Image;
use cema_shift::dataset::{
    self, DatasetError, FolderOptions, Split, load_folder, read_idx_images, read_idx_labels, write_idx_images,
    write_idx_labels,
};

#[test]
fn fashion_mnist_reads_every_image_and_label() {
    let dir = dataset::fashion_mnist_dir().expect("Fashion-MNIST (run scripts/setup.sh)");
    for (split, count) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
        let data = dataset::load_fashion_mnist(&dir, split).expect("load");
        assert_eq!((data.images.len(), data.labels.len()), (count, count));
        assert!(data.images.iter().all(|i| (i.width, i.height, i.channels) == (28, 28, 1)));
        // Fashion-MNIST is balanced: every class has a tenth of the images.
        let mut per_class = [0usize; 10];
        data.labels.iter().for_each(|&l| per_class[l as usize] += 1);
        assert_eq!(per_class, [count / 10; 10]);
        assert_eq!(data.classes.len(), 10);
    }
}

fn write(path: &std::path::Path, bytes: &[u8]) {
    std::fs::File::create(path).and_then(|mut f| f.write_all(bytes)).expect("write");
}

#[test]
fn malformed_idx_files_give_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images: Vec<Image> = (0..3).map(|i| Image::new(4, 4, 1, vec![i as u8; 16])).collect();
    let path = dir.path().join("images");
    write_idx_images(&path, &images).expect("write");
    assert_eq!(read_idx_images(&path).expect("read"), images);

    let good = std::fs::read(&path).expect("read");
    let bad_magic = dir.path().join("bad-magic");
    write(&bad_magic, &[&[0, 0, 8, 1][..], &good[4..]].concat());
    assert!(matches!(read_idx_images(&bad_magic), Err(DatasetError::BadMagic { found: 0x801, kind: "images", .. })));

    let truncated = dir.path().join("truncated");
    write(&truncated, &good[..good.len() - 5]);
    match read_idx_images(&truncated) {
        Err(DatasetError::Truncated { expected: 48, actual: 43, path }) => assert_eq!(path, truncated),
        other => panic!("expected Truncated, got {other:?}"),
    }
    let header_only = dir.path().join("header");
    write(&header_only, &good[..6]);
    assert!(matches!(read_idx_images(&header_only), Err(DatasetError::Truncated { .. })));

    let labels = dir.path().join("labels");
    write_idx_labels(&labels, &[1, 2, 3]).expect("write");
    assert_eq!(read_idx_labels(&labels).expect("read"), vec![1, 2, 3]);
    assert!(matches!(read_idx_images(&labels), Err(DatasetError::BadMagic { .. })));
    assert!(matches!(read_idx_labels(&dir.path().join("missing")), Err(DatasetError::Io { .. })));
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images: Vec<Image> = (0..3).map(|_| Image::new(28, 28, 1, vec![0; 784])).collect();
    write_idx_images(&dir.path().join("t10k-images-idx3-ubyte"), &images).expect("write");
    write_idx_labels(&dir.path().join("t10k-labels-idx1-ubyte"), &[0, 1]).expect("write");
    assert!(matches!(
        dataset::load_fashion_mnist(dir.path(), Split::Test),
        Err(DatasetError::CountMismatch { images: 3, labels: 2 })
    ));
}

fn save(path: &std::path::Path, width: u32, height: u32, colour: [u8; 3]) {
    image::RgbImage::from_pixel(width, height, image::Rgb(colour)).save(path).expect("save png");
}

#[test]
fn labelled_folders_load_resized_and_cropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (class, colour) in [("zebra", [10, 20, 30]), ("ant", [200, 100, 0])] {
        std::fs::create_dir(dir.path().join(class)).expect("mkdir");
        for i in 0..2 {
            save(&dir.path().join(class).join(format!("{i}.png")), 40, 30, colour);
        }
    }
    let options = FolderOptions { resize_shorter: 20, center_crop: 16, grey: false };
    let data = load_folder(dir.path(), options).expect("load");
    assert_eq!(data.classes, vec!["ant", "zebra"]);
    assert_eq!(data.labels, vec![0, 0, 1, 1]);
    assert!(data.images.iter().all(|i| (i.width, i.height, i.channels) == (16, 16, 3)));
    assert_eq!(&data.images[0].pixels[..3], &[200, 100, 0]);

    // A labels.csv takes precedence over folders.
    save(&dir.path().join("flat.png"), 30, 40, [5, 5, 5]);
    write(&dir.path().join("labels.csv"), b"file,class\nflat.png,stone\nant/0.png,ant\n");
    let data = load_folder(dir.path(), FolderOptions { grey: true, ..options }).expect("load");
    assert_eq!((data.classes.clone(), data.labels.clone()), (vec!["ant".to_owned(), "stone".to_owned()], vec![1, 0]));
    assert_eq!(data.images[0].channels, 1);

    write(&dir.path().join("labels.csv"), b"no comma here\n");
    assert!(matches!(load_folder(dir.path(), options), Err(DatasetError::Layout { .. })));
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(load_folder(empty.path(), options), Err(DatasetError::Layout { .. })));
    let bad_crop = FolderOptions { resize_shorter: 10, center_crop: 16, grey: false };
    assert!(matches!(load_folder(dir.path(), bad_crop), Err(DatasetError::Layout { .. })));
    write(&dir.path().join("labels.csv"), b"broken.png,ant\n");
    write(&dir.path().join("broken.png"), b"not a png");
    assert!(matches!(load_folder(dir.path(), options), Err(DatasetError::Image { .. })));
}
