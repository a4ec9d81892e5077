//! JSON without a JSON library: scanning a request body in place ([`scan`]), and writing the
//! few strings and error bodies the crate answers with ([`write`]).

pub(crate) mod scan;
pub(crate) mod write;

pub(crate) use self::scan::*;
