//! Small helpers for building AML with `acpi_tables`, shared by the DSDT
//! (`acpi`) and the devices that describe themselves in it.

use acpi_tables::{Aml, AmlSink};

/// Already-encoded AML, spliced into a parent object.
pub struct RawAml(pub Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// Encodes `aml` into `out`.
pub fn append(aml: &dyn Aml, out: &mut Vec<u8>) {
    aml.to_aml_bytes(out);
}
