//! JSON without a JSON library: scanning a request body in place ([`scan`]), replacing one
//! member of an object in a copy ([`member`]), and writing the few strings and error bodies
//! the crate answers with ([`write`]).

pub(crate) mod member;
pub(crate) mod scan;
pub(crate) mod write;

pub(crate) use self::scan::*;
