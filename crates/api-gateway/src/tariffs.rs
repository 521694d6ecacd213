//! The tariffs file (`TARIFFS_FILE`, default: the repository's `config/tariffs.toml`, built
//! in) and its upsert into the `tariffs` table at start-up.
//!
//! A tariff's `title` and `description` are its Russian (default) texts; `en = { title,
//! description }` gives the English ones. Both go to `tariff_texts`; a file without `en`
//! shows its `title` to everyone, as before.

use std::collections::HashSet;
use std::path::Path;

use domain::entities::{tariff_texts, tariffs};
use domain::money::{Currency, Money};
use sea_orm::QueryFilter;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, EntityTrait};
use serde::Deserialize;

/// The default tariffs (1, 3, 6 and 12 months).
pub const DEFAULT_TARIFFS: &str = include_str!("../../../config/tariffs.toml");

const GIB: i64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TariffsError {
    #[error("cannot read the tariffs file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tariffs file is malformed: {0}")]
    Malformed(String),
    #[error("tariff {code}: {reason}")]
    Invalid { code: String, reason: String },
    #[error("cannot store tariffs: {0}")]
    Db(#[from] sea_orm::DbErr),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffsFile {
    tariff: Vec<TariffSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffSpec {
    code: String,
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    en: Option<TextSpec>,
    duration_days: i32,
    #[serde(default)]
    data_limit_gb: Option<i64>,
    #[serde(default)]
    price_rub: Option<String>,
    #[serde(default)]
    price_xtr: Option<String>,
    #[serde(default)]
    price_usdt: Option<String>,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    sort_order: i32,
}

/// A tariff's texts in another language than the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextSpec {
    title: String,
    #[serde(default)]
    description: Option<String>,
}

fn yes() -> bool {
    true
}

/// A tariff's title and description in one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TariffText {
    /// `ru` (the default texts) or `en`.
    pub lang: &'static str,
    pub title: String,
    pub description: Option<String>,
}

/// A validated tariff, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tariff {
    pub code: String,
    /// The default (Russian) title, also `texts[0].title`.
    pub title: String,
    /// The default texts first (`ru`), then `en` if the file has it.
    pub texts: Vec<TariffText>,
    pub duration_days: i32,
    pub data_limit_bytes: Option<i64>,
    pub price_rub: Option<Money>,
    pub price_xtr: Option<Money>,
    pub price_usdt: Option<Money>,
    pub active: bool,
    pub sort_order: i32,
}

/// Reads `path`, or the built-in default when `None`.
pub fn load(path: Option<&Path>) -> Result<Vec<Tariff>, TariffsError> {
    match path {
        None => parse(DEFAULT_TARIFFS),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| TariffsError::Read {
                path: path.display().to_string(),
                source,
            })?;
            parse(&text)
        }
    }
}

pub fn parse(text: &str) -> Result<Vec<Tariff>, TariffsError> {
    let file: TariffsFile = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| TariffsError::Malformed(e.to_string()))?;
    let mut seen = HashSet::new();
    file.tariff
        .into_iter()
        .map(|spec| {
            let invalid = |reason: String| TariffsError::Invalid {
                code: spec.code.clone(),
                reason,
            };
            if spec.code.is_empty() || !seen.insert(spec.code.clone()) {
                return Err(invalid("empty or repeated code".into()));
            }
            let text = |title: &str, description: Option<String>, lang| {
                let title = title.trim();
                if title.is_empty() {
                    return Err(invalid(format!("empty {lang} title")));
                }
                Ok(TariffText {
                    lang,
                    title: title.to_owned(),
                    description: description
                        .map(|d| d.trim().to_owned())
                        .filter(|d| !d.is_empty()),
                })
            };
            let mut texts = vec![text(&spec.title, spec.description.clone(), "ru")?];
            if let Some(en) = &spec.en {
                texts.push(text(&en.title, en.description.clone(), "en")?);
            }
            if spec.duration_days <= 0 {
                return Err(invalid("duration_days must be positive".into()));
            }
            let price = |raw: &Option<String>, currency: Currency| {
                raw.as_deref()
                    .map(|s| Money::parse(s, currency))
                    .transpose()
                    .map_err(|e| invalid(format!("price in {}: {e}", currency.code())))
            };
            let data_limit_bytes = spec
                .data_limit_gb
                .map(|gb| {
                    gb.checked_mul(GIB)
                        .filter(|b| *b > 0)
                        .ok_or_else(|| invalid("data_limit_gb out of range".into()))
                })
                .transpose()?;
            Ok(Tariff {
                price_rub: price(&spec.price_rub, Currency::Rub)?,
                price_xtr: price(&spec.price_xtr, Currency::Xtr)?,
                price_usdt: price(&spec.price_usdt, Currency::Usdt)?,
                code: spec.code,
                title: texts[0].title.clone(),
                texts,
                duration_days: spec.duration_days,
                data_limit_bytes,
                active: spec.active,
                sort_order: spec.sort_order,
            })
        })
        .collect()
}

/// Inserts or updates every tariff by code, and deactivates tariffs the file no longer has
/// (they stay in the table: old payments point at them).
pub async fn upsert(db: &sea_orm::DatabaseConnection, list: &[Tariff]) -> Result<(), TariffsError> {
    let txn = service_kit::db::begin_write(db).await?;
    for tariff in list {
        let row = tariffs::ActiveModel {
            id: NotSet,
            code: Set(tariff.code.clone()),
            title: Set(tariff.title.clone()),
            duration_days: Set(tariff.duration_days),
            data_limit_bytes: Set(tariff.data_limit_bytes),
            price_rub_minor: Set(tariff.price_rub.map(Money::minor)),
            price_xtr: Set(tariff.price_xtr.map(Money::minor)),
            price_usdt_minor: Set(tariff.price_usdt.map(Money::minor)),
            active: Set(tariff.active),
            sort_order: Set(tariff.sort_order),
        };
        tariffs::Entity::insert(row)
            .on_conflict(
                OnConflict::column(tariffs::Column::Code)
                    .update_columns([
                        tariffs::Column::Title,
                        tariffs::Column::DurationDays,
                        tariffs::Column::DataLimitBytes,
                        tariffs::Column::PriceRubMinor,
                        tariffs::Column::PriceXtr,
                        tariffs::Column::PriceUsdtMinor,
                        tariffs::Column::Active,
                        tariffs::Column::SortOrder,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    let codes: Vec<String> = list.iter().map(|t| t.code.clone()).collect();
    tariffs::Entity::update_many()
        .col_expr(
            tariffs::Column::Active,
            sea_orm::sea_query::Expr::value(false),
        )
        .filter(tariffs::Column::Code.is_not_in(codes.clone()))
        .exec(&txn)
        .await?;
    store_texts(&txn, list, codes).await?;
    txn.commit().await?;
    Ok(())
}

/// Replaces the texts of the file's tariffs with the file's.
async fn store_texts(
    txn: &sea_orm::DatabaseTransaction,
    list: &[Tariff],
    codes: Vec<String>,
) -> Result<(), TariffsError> {
    let ids: std::collections::HashMap<String, i64> = tariffs::Entity::find()
        .filter(tariffs::Column::Code.is_in(codes))
        .all(txn)
        .await?
        .into_iter()
        .map(|row| (row.code, row.id))
        .collect();
    tariff_texts::Entity::delete_many()
        .filter(tariff_texts::Column::TariffId.is_in(ids.values().copied()))
        .exec(txn)
        .await?;
    let rows: Vec<tariff_texts::ActiveModel> = list
        .iter()
        .filter_map(|tariff| ids.get(&tariff.code).map(|id| (*id, tariff)))
        .flat_map(|(id, tariff)| {
            tariff
                .texts
                .iter()
                .map(move |text| tariff_texts::ActiveModel {
                    tariff_id: Set(id),
                    lang: Set(text.lang.to_owned()),
                    title: Set(text.title.clone()),
                    description: Set(text.description.clone()),
                })
        })
        .collect();
    if !rows.is_empty() {
        tariff_texts::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_has_four_tariffs() {
        let list = load(None).unwrap();
        let codes: Vec<&str> = list.iter().map(|t| t.code.as_str()).collect();
        assert_eq!(codes, ["month_1", "month_3", "month_6", "month_12"]);
        let days: Vec<i32> = list.iter().map(|t| t.duration_days).collect();
        assert_eq!(days, [30, 90, 180, 365]);
        assert_eq!(list[0].price_rub, Some(Money::new(19_900, Currency::Rub)));
        assert_eq!(
            list[0].price_usdt,
            Some(Money::new(2_500_000, Currency::Usdt))
        );
        assert!(
            list.iter()
                .all(|t| t.active && t.data_limit_bytes.is_none())
        );
    }

    #[test]
    fn texts_per_language() {
        let list = load(None).unwrap();
        let langs: Vec<&str> = list[0].texts.iter().map(|t| t.lang).collect();
        assert_eq!(langs, ["ru", "en"]);
        assert_eq!(list[0].title, "1 месяц");
        assert_eq!(list[0].texts[1].title, "1 month");
        assert!(
            list.iter()
                .all(|t| t.texts.iter().all(|x| x.description.is_some()))
        );

        let plain = parse("[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\n").unwrap();
        assert_eq!(
            plain[0].texts,
            [TariffText {
                lang: "ru",
                title: "X".into(),
                description: None
            }]
        );
        let no_en_title = "[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\n\
                           en = { description = \"d\" }\n";
        assert!(parse(no_en_title).is_err());
        let blank_en = "[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\n\
                        en = { title = \" \" }\n";
        assert!(matches!(parse(blank_en), Err(TariffsError::Invalid { .. })));
        let other_lang = "[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\n\
                          de = { title = \"Y\" }\n";
        assert!(parse(other_lang).is_err());
    }

    #[test]
    fn refuses_bad_files() {
        assert!(parse("[[tariff]]\ncode = \"x\"\n").is_err());
        let bad_price =
            "[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\nprice_rub = \"1.999\"\n";
        assert!(matches!(
            parse(bad_price),
            Err(TariffsError::Invalid { .. })
        ));
        let unknown = "[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\nprice = 1\n";
        assert!(parse(unknown).is_err());
        let limited =
            "[[tariff]]\ncode = \"x\"\ntitle = \"X\"\nduration_days = 30\ndata_limit_gb = 2\n";
        assert_eq!(parse(limited).unwrap()[0].data_limit_bytes, Some(2 * GIB));
    }
}
